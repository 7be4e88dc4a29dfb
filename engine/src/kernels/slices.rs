//! Access to the f32 data of CPU tensors, and tensors built from vectors.

use candle_core::{bail, CpuStorage, DType, Result, Storage, Tensor};
use std::mem::MaybeUninit;

use rayon::prelude::*;

/// Whether the fast path applies: a CPU tensor of f32.
pub(crate) fn fast(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32
}

/// Runs `f` on the f32 elements of `t` in row-major order (made contiguous first if needed).
/// Callers check [`fast`] first; other tensors are an error.
pub(crate) fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(CpuStorage::F32(data)) = &*storage else {
        bail!("kernels: expected a CPU f32 tensor, got {:?}", t.dtype())
    };
    let Some((start, end)) = layout.contiguous_offsets() else {
        bail!("kernels: tensor is not contiguous after contiguous()")
    };
    Ok(f(&data[start..end]))
}

/// Runs `f` on the f32 elements of the matrix `t` (`[rows, cols]`) from its first row on, and
/// the distance between its rows: in place when each row's values are adjacent (rows may be
/// further apart than `cols`, as in the padded weights of [`super::transpose`]), else made
/// contiguous first (distance `cols`). Callers check [`fast`] first.
pub(crate) fn with_f32_rows<R>(t: &Tensor, f: impl FnOnce(&[f32], usize) -> R) -> Result<R> {
    let (rows, cols) = t.dims2()?;
    let row = t.stride()[0];
    if rows == 0 || cols == 0 || t.stride()[1] != 1 || row < cols {
        return with_f32(t, |data| f(data, cols));
    }
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(CpuStorage::F32(data)) = &*storage else {
        bail!("kernels: expected a CPU f32 tensor, got {:?}", t.dtype())
    };
    let start = layout.start_offset();
    Ok(f(&data[start..start + (rows - 1) * row + cols], row))
}

/// Copies the f32 elements of `t` (row-major) into a vector; for small tensors like biases.
pub(crate) fn to_vec(t: &Tensor) -> Result<Vec<f32>> {
    with_f32(t, |s| s.to_vec())
}

/// `f` on each `(index, chunk)` of `data` cut into chunks of `size`: on all rayon threads when
/// `parallel`, in order on this one otherwise.
pub(crate) fn for_each_chunk<T: Send>(
    data: &mut [T],
    size: usize,
    parallel: bool,
    f: impl Fn((usize, &mut [T])) + Sync + Send,
) {
    for_each_chunk_init(data, size, parallel, || (), |_, chunk| f(chunk));
}

/// [`for_each_chunk`] with a value made by `init` for the chunks of each rayon task (once in
/// all when not `parallel`) and lent to `f`: scratch buffers made once, not per chunk.
pub(crate) fn for_each_chunk_init<T: Send, S>(
    data: &mut [T],
    size: usize,
    parallel: bool,
    init: impl Fn() -> S + Sync + Send,
    f: impl Fn(&mut S, (usize, &mut [T])) + Sync + Send,
) {
    if parallel {
        data.par_chunks_mut(size).enumerate().for_each_init(init, f);
    } else {
        let mut state = init();
        data.chunks_mut(size)
            .enumerate()
            .for_each(|chunk| f(&mut state, chunk));
    }
}

/// `n` zeros, written by all rayon threads in large blocks (a large `vec![0.0; n]` is zeroed
/// by the calling thread alone whenever the allocator hands back memory it had before).
pub(crate) fn zeros<T: Copy + Default + Send + Sync>(n: usize) -> Vec<T> {
    let mut v = Vec::with_capacity(n);
    v.spare_capacity_mut()[..n]
        .par_chunks_mut(1 << 16)
        .for_each(|c| c.fill(MaybeUninit::new(T::default())));
    // SAFETY: the capacity is at least `n`, and the loop above initialised its first `n`
    // elements.
    #[allow(unsafe_code)]
    unsafe {
        v.set_len(n)
    };
    v
}
