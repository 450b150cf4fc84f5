//! Parallel work over f32 buffers on candle's CPU worker pool
//! (`candle_core::utils::barrier_pool`), the one candle 0.11's element-wise ops use, rather
//! than on rayon's global pool, where candle's workers would spin beside them after each
//! candle op. Measured (vit-tiny, batch 16, shared 2-core machine, two runs each): training
//! step 2.90–2.94 s here against 3.06–3.20 s on rayon's pool.
//!
//! On x86-64 the work each task does is compiled for AVX2 and FMA (x86-64-v3, every x86 CPU
//! since 2013–2015), 8 lanes wide, whatever the build's target: the task closures are
//! inlined into [`run_spans`], which carries those target features. Callers check
//! [`kernels_supported`] first; where it is false (an older CPU) the fused kernels are not
//! used at all and candle's composite ops run instead.

use std::cell::Cell;
use std::mem::MaybeUninit;
use std::ops::Range;

thread_local! {
    /// How many times this thread has run work on the pool ([`kernel_runs`]).
    static KERNEL_RUNS: Cell<u64> = const { Cell::new(0) };
}

/// How many fused kernels this thread has run on the pool so far: a test reads it before and
/// after an op to show that the kernels, not candle's composite path, computed it.
pub fn kernel_runs() -> u64 {
    KERNEL_RUNS.get()
}

/// Whether this CPU runs the pool's kernels: AVX2 and FMA on x86-64, always elsewhere (the
/// kernels are compiled for the target's baseline there).
pub fn kernels_supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        true
    }
}

/// Panics where [`kernels_supported`] is false: running them there would be undefined
/// behaviour, and the fused ops' dispatch never gets here on such a CPU.
fn check_kernels_supported() {
    assert!(
        kernels_supported(),
        "the fused CPU kernels need AVX2 and FMA on x86-64; the composite path should have run"
    );
}

/// A new `len`-value buffer cut into the spans of `tasks` tasks (`span(t)`, ascending,
/// disjoint and together covering the buffer, checked), each filled by `f(t, span)` in parallel.
///
/// `f` is meant to write every value of its span. Each task initialises its span itself just
/// before `f` sees it (zeros; NaN in debug builds, so that a value `f` leaves unwritten shows
/// in any test): in parallel, on memory `f` is about to write, rather than a serial clear of the
/// whole buffer first (that was 4 % of a training step, the other thread idle meanwhile).
pub(crate) fn par_spans(
    len: usize,
    tasks: usize,
    span: impl Fn(usize) -> Range<usize> + Sync,
    f: impl Fn(usize, &mut [f32]) + Sync + Send,
) -> Vec<f32> {
    fresh_buffer(len, tasks, span, Pieces::WHOLE, f)
}

/// A new `len`-value buffer whose rows of `width` values (the last one possibly shorter) are
/// filled by `f(row index, row)` in parallel, `per_task` rows to a task (1 where each row is a
/// large piece of work, such as a whole attention head). `f` writes every value, as for
/// [`par_spans`] (which initialises the rows first).
pub(crate) fn par_blocks(
    len: usize,
    width: usize,
    per_task: usize,
    f: impl Fn(usize, &mut [f32]) + Sync + Send,
) -> Vec<f32> {
    if width == 0 || len == 0 {
        return vec![0f32; len];
    }
    let block = per_task * width;
    fresh_buffer(
        len,
        len.div_ceil(block),
        |t| t * block..len.min((t + 1) * block),
        Pieces { width, per_task },
        f,
    )
}

/// `data` cut into chunks of `chunk` values (the last one possibly shorter), each updated in
/// place by `f(chunk index, chunk)` in parallel.
pub(crate) fn par_chunks_in_place(
    data: &mut [f32],
    chunk: usize,
    f: impl Fn(usize, &mut [f32]) + Sync + Send,
) {
    check_kernels_supported();
    let (len, chunk) = (data.len(), chunk.max(1));
    // SAFETY: `data` is `len` initialised values borrowed mutably for the whole call; the CPU
    // has the kernels' target features (checked).
    unsafe {
        run_spans(
            data.as_mut_ptr(),
            len,
            len.div_ceil(chunk),
            |t| t * chunk..len.min((t + 1) * chunk),
            Pieces::WHOLE,
            Fresh::Initialised,
            f,
        )
    }
}

/// A new `len`-value buffer filled by [`run_spans`].
fn fresh_buffer(
    len: usize,
    tasks: usize,
    span: impl Fn(usize) -> Range<usize> + Sync,
    pieces: Pieces,
    f: impl Fn(usize, &mut [f32]) + Sync + Send,
) -> Vec<f32> {
    check_kernels_supported();
    let mut out: Vec<f32> = Vec::with_capacity(len);
    let spare = &mut out.spare_capacity_mut()[..len];
    // SAFETY: `spare` is `len` values borrowed mutably for the whole call, uninitialised as
    // `Fresh::Uninitialised` allows; the CPU has the kernels' target features (checked).
    unsafe {
        run_spans(
            spare.as_mut_ptr().cast::<f32>(),
            len,
            tasks,
            span,
            pieces,
            Fresh::Uninitialised,
            f,
        )
    };
    // SAFETY: `run_spans` returned, so its spans covered `0..len` (it checks that before running
    // any task) and each task initialised its own span before handing it to `f`.
    unsafe { out.set_len(len) };
    out
}

/// How [`run_spans`] hands a task's span to `f`: in pieces of `width` values (the last one
/// possibly shorter), piece `j` of task `t` numbered `t·per_task + j`.
#[derive(Clone, Copy)]
struct Pieces {
    width: usize,
    per_task: usize,
}

impl Pieces {
    /// The whole span at once, numbered by its task.
    const WHOLE: Pieces = Pieces {
        width: usize::MAX,
        per_task: 1,
    };
}

/// Whether the buffer [`run_spans`] hands out holds values yet.
#[derive(Clone, Copy, PartialEq)]
enum Fresh {
    /// Not yet: each task initialises its span (zeros, NaN in debug builds), then `f` writes it.
    Uninitialised,
    /// Yes: each span is `f`'s to update.
    Initialised,
}

/// Runs `f(piece number, piece)` over the pieces of every task's span of the buffer at `out`
/// on the pool, after checking that the spans are ascending, disjoint and cover `0..len`.
/// The pieces are cut here rather than by a closure wrapped around `f`, so that `f` has this
/// one call site and is inlined into code built with this function's target features.
///
/// Where `fresh` is [`Fresh::Uninitialised`], each task initialises its span before `f` sees it,
/// so that on return every value of `0..len` is initialised.
///
/// # Safety
/// `out` must be valid for reads and writes of `len` values, with nothing else accessing them
/// until this returns; where `fresh` is [`Fresh::Initialised`] they must be initialised. The
/// CPU must have AVX2 and FMA on x86-64 ([`kernels_supported`]).
#[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx2,fma"))]
unsafe fn run_spans(
    out: *mut f32,
    len: usize,
    tasks: usize,
    span: impl Fn(usize) -> Range<usize> + Sync,
    pieces: Pieces,
    fresh: Fresh,
    f: impl Fn(usize, &mut [f32]) + Sync + Send,
) {
    let mut end = 0;
    for t in 0..tasks {
        let r = span(t);
        assert!(
            r.start == end && r.start <= r.end && r.end <= len,
            "task spans overlap, leave gaps or leave the buffer"
        );
        end = r.end;
    }
    assert!(end == len, "task spans do not cover the buffer");
    KERNEL_RUNS.set(KERNEL_RUNS.get() + 1);
    /// The buffer's address, shared by the workers, which access disjoint spans.
    struct Spans(*mut f32);
    // SAFETY: the workers access disjoint parts of the buffer (below).
    unsafe impl Sync for Spans {}
    let out = Spans(out);
    let out = &out;
    // This closure inherits the function's target features.
    candle_core::utils::barrier_pool().execute_chunked(tasks, |chunk| {
        for t in chunk {
            let r = span(t);
            // SAFETY: the spans lie in the buffer and do not overlap (checked above); the
            // buffer outlives `execute_chunked` (it returns once every call has), and each task
            // index is handed to exactly one call, so nothing else accesses the span.
            let part = unsafe {
                std::slice::from_raw_parts_mut(
                    out.0.add(r.start).cast::<MaybeUninit<f32>>(),
                    r.len(),
                )
            };
            if fresh == Fresh::Uninitialised {
                part.fill(MaybeUninit::new(if cfg!(debug_assertions) {
                    f32::NAN
                } else {
                    0.0
                }));
            }
            // SAFETY: every value of the span is initialised: by the fill just above, or by the
            // caller (`Fresh::Initialised`, this function's contract).
            let part = unsafe { &mut *(part as *mut [MaybeUninit<f32>] as *mut [f32]) };
            for (j, piece) in part.chunks_mut(pieces.width).enumerate() {
                f(t * pieces.per_task + j, piece);
            }
        }
    });
}
