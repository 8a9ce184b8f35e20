//! A recorder of the tensors the seam's ops hand to their kernels, for tests: `capture(f)` runs
//! `f` and returns, with its result, every input that reached a seam op on this thread (after the
//! policy was applied: what the Candle op or our kernel actually read). Off, it costs one
//! thread-local borrow per op.

use std::cell::RefCell;

use candle_core::Tensor;

/// One input seen by a seam op.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// The seam op (`exec::conv1d` records "conv1d" for its input and "conv1d weight" for its
    /// kernel).
    pub op: &'static str,
    pub dims: Vec<usize>,
    pub stride: Vec<usize>,
    pub contiguous: bool,
}

thread_local! {
    static LOG: RefCell<Option<Vec<Seen>>> = const { RefCell::new(None) };
}

/// Run `f`, recording every input a seam op reads on this thread meanwhile. Nested captures
/// each see their own calls only.
pub fn capture<R>(f: impl FnOnce() -> R) -> (R, Vec<Seen>) {
    let outer = LOG.with(|l| l.borrow_mut().replace(Vec::new()));
    let r = f();
    let seen = LOG.with(|l| std::mem::replace(&mut *l.borrow_mut(), outer)).unwrap_or_default();
    (r, seen)
}

/// Note that `op` reads `t` (a no-op unless a capture is running).
pub(super) fn note(op: &'static str, t: &Tensor) {
    LOG.with(|l| {
        if let Some(log) = l.borrow_mut().as_mut() {
            log.push(Seen { op, dims: t.dims().to_vec(), stride: t.stride().to_vec(), contiguous: t.is_contiguous() });
        }
    });
}
