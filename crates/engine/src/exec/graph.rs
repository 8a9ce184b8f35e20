//! CUDA graphs over Candle's ops: a piece of a step (Candle's kernels, cuBLAS, ours) recorded
//! once by stream capture on Candle's own stream and replayed as one launch. Candle has no graph
//! API of its own, but since 0.11 its CUDA backend keeps the small host→device copies its
//! kernels make for strided layouts in a cache while `enable_cuda_graph_htod_cache` is held, so
//! that a capture finds them on the device instead of copying from the host (which a capture
//! cannot record). The rules a captured piece follows here:
//!
//! - it is run once eagerly with the cache on before it is captured (`warm`), so that every
//!   layout it needs is cached and every kernel module loaded;
//! - its inputs are tensors made before the capture and written in place before each replay
//!   (never re-made: the graph holds their addresses); anything whose value changes per frame
//!   (noise, settings, positions) reaches it that way, never as a kernel argument;
//! - what it allocates becomes graph memory at addresses fixed for the graph's life
//!   (instantiated with auto-free-on-launch), so its outputs are read through the tensors the
//!   capture returned, which the graph owner keeps alive until it drops the graph;
//! - it makes no host copy and no synchronisation (Candle refuses device→host copies while
//!   capturing, with an error saying so).

//!
//! Where graphs are used: [`applies`] (CUDA, `RunOptions::cuda_graphs`): the temporal step
//! (`lm::temporal_graph`: its 32 layers, `out_norm` and the text head, where the fused decode
//! kernels run it, which read the step's position on the device) and, with the device sampler,
//! the depformer's steps with their sampling (`lm::frame_graph`), and Mimi's streaming encode and
//! decode (`mimi::graph`: each frame's SEANet, transformer, resampling and RVQ, the transformer in
//! the fixed layout of `exec::step_ctx`). Everything else, and every op with the option off, runs
//! eagerly.

use candle_core::Device;
#[cfg(feature = "cuda")]
use candle_core::{cuda_backend::cudarc::driver::sys, cuda_backend::cudarc::driver::CudaGraph, CudaDevice};

use super::{Backend, RunOptions};
use crate::error::{EngineError, Result};

/// Whether a conversation with `options` on `device` replays graphs.
pub fn applies(device: &Device, options: &RunOptions) -> bool {
    options.cuda_graphs && cfg!(feature = "cuda") && Backend::of(device) == Backend::Cuda
}

#[cfg(feature = "cuda")]
fn cuda(device: &Device) -> Result<&CudaDevice> {
    match device {
        Device::Cuda(d) => Ok(d),
        d => Err(EngineError::InvalidInput(format!("a CUDA graph on {d:?}"))),
    }
}

/// Run `f` eagerly with Candle's capture cache on (the warm-up run before a capture).
pub fn warm<R>(device: &Device, f: impl FnOnce() -> Result<R>) -> Result<R> {
    #[cfg(feature = "cuda")]
    let _cache = cuda(device)?.enable_cuda_graph_htod_cache();
    let _ = device;
    f()
}

/// A recorded piece of work and what it returned (tensors in graph memory, rewritten by each
/// replay). `outputs` is declared first so that it is dropped before the graph.
pub struct Captured<R> {
    pub outputs: R,
    #[cfg(feature = "cuda")]
    graph: OwnedGraph,
}

/// cudarc's graph, which holds raw driver handles and so is not `Send`.
#[cfg(feature = "cuda")]
struct OwnedGraph(CudaGraph);

// SAFETY: a CUDA graph is not tied to the thread that made it; the driver asks only that calls on
// one graph be serialised. `OwnedGraph` is owned by one conversation state (not `Sync`, never
// shared), so moving it to the thread that steps the conversation keeps every call on it in order.
#[cfg(feature = "cuda")]
unsafe impl Send for OwnedGraph {}

impl<R> Captured<R> {
    /// Replay the recorded work on Candle's stream (asynchronous, as any launch).
    pub fn replay(&self) -> Result<()> {
        #[cfg(feature = "cuda")]
        return self.graph.0.launch().map_err(|e| EngineError::InvalidInput(format!("CUDA graph launch: {e}")));
        #[cfg(not(feature = "cuda"))]
        Err(EngineError::InvalidInput("CUDA graphs need the cuda feature".into()))
    }
}

/// Record `f`'s launches on `device`'s stream without running them. On an error inside `f` the
/// capture is ended and thrown away, and the error returned (nothing was run).
#[cfg(not(feature = "cuda"))]
pub fn capture<R>(device: &Device, f: impl FnOnce() -> Result<R>) -> Result<Captured<R>> {
    let _ = (device, f);
    Err(EngineError::InvalidInput("CUDA graphs need the cuda feature".into()))
}

/// Record `f`'s launches on `device`'s stream without running them. On an error inside `f` the
/// capture is ended and thrown away, and the error returned (nothing was run).
#[cfg(feature = "cuda")]
pub fn capture<R>(device: &Device, f: impl FnOnce() -> Result<R>) -> Result<Captured<R>> {
    let dev = cuda(device)?;
    let stream = dev.cuda_stream();
    let _cache = dev.enable_cuda_graph_htod_cache();
    let wrap = |what: &str, e: candle_core::cuda_backend::cudarc::driver::DriverError| EngineError::InvalidInput(format!("CUDA graph {what}: {e}"));
    // Relaxed: Candle loads kernel modules and cudarc may query the context on this thread
    // while capturing; only this stream's work is recorded either way.
    stream.begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED).map_err(|e| wrap("begin", e))?;
    let outputs = f();
    let flags = sys::CUgraphInstantiate_flags::CUDA_GRAPH_INSTANTIATE_FLAG_AUTO_FREE_ON_LAUNCH;
    let graph = stream.end_capture(flags);
    let outputs = outputs?;
    let graph = graph.map_err(|e| wrap("capture", e))?.ok_or_else(|| EngineError::InvalidInput("CUDA graph capture recorded nothing".into()))?;
    graph.upload().map_err(|e| wrap("upload", e))?;
    Ok(Captured { outputs, graph: OwnedGraph(graph) })
}
