//! The engine's CUDA side: `kernels.cu` compiled by NVRTC for the device at hand, device
//! buffers with their raw addresses, and a launch with no per-call bookkeeping.

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, DeviceRepr, ValidAsZeroBits};
use cudarc::nvrtc::{CompileOptions, Ptx, compile_ptx_with_opts};

use super::{CudaError, MAX_SEQS};

/// The kernel source (see its header for the conventions).
pub const SOURCE: &str = include_str!("kernels.cu");

/// A device allocation kept alive with its address (the engine launches with raw addresses, so
/// a launch costs one driver call and nothing else).
pub struct Buf {
    _keep: Box<dyn std::any::Any + Send + Sync>,
    /// The device address.
    pub ptr: u64,
    /// Elements.
    pub len: usize,
    /// Bytes.
    pub bytes: usize,
}

impl Buf {
    fn from_slice<T: DeviceRepr + Send + Sync + 'static>(s: CudaSlice<T>, stream: &CudaStream) -> Self {
        let ptr = s.device_ptr(stream).0;
        let len = s.len();
        Buf { _keep: Box::new(s), ptr, len, bytes: len * std::mem::size_of::<T>() }
    }

    /// `count` zeroed elements of `T`.
    pub fn zeros<T: DeviceRepr + ValidAsZeroBits + Send + Sync + 'static>(stream: &Arc<CudaStream>, count: usize) -> Result<Self, CudaError> {
        Ok(Self::from_slice(stream.alloc_zeros::<T>(count.max(1))?, stream))
    }

    /// A copy of `data` on the device.
    pub fn upload<T: DeviceRepr + Send + Sync + 'static>(stream: &Arc<CudaStream>, data: &[T]) -> Result<Self, CudaError> {
        Ok(Self::from_slice(stream.clone_htod(data)?, stream))
    }

    /// The address of element `i` of a buffer of `elem_bytes`-sized elements.
    pub fn at(&self, i: usize, elem_bytes: usize) -> u64 {
        self.ptr + (i * elem_bytes) as u64
    }
}

/// A kernel argument.
#[derive(Clone, Copy)]
pub enum Arg {
    /// A device address (0 for none).
    P(u64),
    /// An `int`.
    I(i32),
    /// A `long long`.
    L(i64),
    /// A `float`.
    F(f32),
}

/// The compiled module's functions by name.
pub struct Kernels {
    funcs: HashMap<String, CudaFunction>,
    stream: Arc<CudaStream>,
}

impl Kernels {
    /// Compiles [`SOURCE`] for the context's device (one program for the matrix-vector kernels
    /// of each row count and one for the rest, in parallel) and loads every entry point.
    pub fn compile(ctx: &Arc<CudaContext>, stream: Arc<CudaStream>) -> Result<Self, CudaError> {
        let (major, minor) = ctx.compute_capability()?;
        let arch: &'static str = Box::leak(format!("sm_{major}{minor}").into_boxed_str());
        let defines: Vec<Option<usize>> = std::iter::once(None).chain((1..=MAX_SEQS).map(Some)).collect();
        let ptxs: Vec<Result<Ptx, CudaError>> = std::thread::scope(|scope| {
            let jobs: Vec<_> = defines
                .iter()
                .map(|rows| {
                    scope.spawn(move || {
                        let mut options = vec!["--std=c++17".to_string()];
                        options.extend(rows.map(|m| format!("-DXC_GEMV_ROWS={m}")));
                        let opts = CompileOptions { arch: Some(arch), options, ..Default::default() };
                        compile_ptx_with_opts(SOURCE, opts).map_err(|e| CudaError::Compile(e.to_string()))
                    })
                })
                .collect();
            jobs.into_iter().map(|j| j.join().unwrap_or_else(|_| Err(CudaError::Compile("NVRTC panicked".into())))).collect()
        });
        let mut funcs = HashMap::new();
        for ptx in ptxs {
            let ptx = ptx?;
            let names: Vec<String> = ptx
                .to_src()
                .lines()
                .filter_map(|l| l.trim().strip_prefix(".visible .entry ").map(|n| n.trim_end_matches('(').to_string()))
                .collect();
            let module = ctx.load_module(ptx)?;
            for n in names {
                let f = module.load_function(&n)?;
                funcs.insert(n, f);
            }
        }
        Ok(Kernels { funcs, stream })
    }

    /// Launches `name` on the engine's stream.
    pub fn launch(&self, name: &str, grid: (u32, u32, u32), block: u32, args: &[Arg]) -> Result<(), CudaError> {
        let f = self.funcs.get(name).ok_or_else(|| CudaError::Unsupported(format!("no kernel named {name}")))?;
        let mut vals: Vec<Arg> = args.to_vec();
        let mut params: Vec<*mut c_void> = vals
            .iter_mut()
            .map(|a| match a {
                Arg::P(p) => p as *mut u64 as *mut c_void,
                Arg::I(i) => i as *mut i32 as *mut c_void,
                Arg::L(i) => i as *mut i64 as *mut c_void,
                Arg::F(x) => x as *mut f32 as *mut c_void,
            })
            .collect();
        // SAFETY: the arguments match the kernel's parameters (each call site follows kernels.cu)
        // and every address is a live buffer of the engine.
        unsafe {
            cudarc::driver::result::launch_kernel(f.cu_function(), grid, (block, 1, 1), 0, self.stream.cu_stream(), &mut params)?;
        }
        Ok(())
    }
}
