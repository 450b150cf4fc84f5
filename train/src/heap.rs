//! Keeping freed memory in the process between training steps.
//!
//! A training step allocates and frees the same activations and gradients (tens to hundreds
//! of megabytes) every step. glibc's malloc hands large blocks back to the kernel as soon as
//! they are freed (its mmap threshold) and trims the top of the heap, so the next step
//! page-faults on fresh pages that the kernel zeroes again: about 12 % of a vit-tiny CPU step
//! on the development machine (BENCHMARKS.md, "Training").

/// Largest block glibc serves from its heap when asked (its `M_MMAP_THRESHOLD` ceiling on
/// 64-bit, 32 MiB); larger blocks still come from the kernel each time.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 32 << 20;

/// Tells the C allocator to keep freed memory for reuse instead of returning it to the
/// kernel: raises glibc's mmap threshold to its ceiling and its trim threshold to the largest
/// value it takes. Process-wide; call it once at start-up, before the first step. Without
/// glibc (other targets) it does nothing.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; glibc documents it as callable at
    // any time, and a refused value (returned 0) leaves the default in place.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, libc::c_int::MAX);
    }
}
