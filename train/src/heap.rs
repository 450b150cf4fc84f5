//! Keeping freed memory in the process between training steps.
//!
//! A training step allocates and frees the same activations and gradients (tens to hundreds
//! of megabytes) every step. glibc's malloc gives a large block its own mapping, returned to
//! the kernel as soon as it is freed, and trims the top of the heap, so the next step
//! page-faults on fresh pages that the kernel zeroes again: about 12 % of a vit-tiny CPU step
//! at batch 16 (BENCHMARKS.md, "Training"). Raising the mmap threshold is not enough: glibc
//! caps it at 32 MiB, and at batch 64 a vit-tiny step's relation maps and MLP activations
//! are 39–119 MB each (the kernel's page clearing was 13 % of that step).

/// Tells the C allocator to keep freed memory for reuse instead of returning it to the
/// kernel: every block comes from its heaps (no block gets a mapping of its own:
/// `M_MMAP_MAX` 0) and the heap's top is never trimmed (`M_TRIM_THRESHOLD` at its largest).
/// The process keeps its peak footprint between steps, which a training step reaches anyway.
/// Process-wide; call it once at start-up, before the first step. Without glibc (other
/// targets) it does nothing.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; glibc documents it as callable at
    // any time, and a refused value (returned 0) leaves the default in place.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, libc::c_int::MAX);
    }
}
