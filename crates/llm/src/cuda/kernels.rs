//! The engine's CUDA side: `kernels.cu` compiled by NVRTC for the device at hand, device
//! buffers with their raw addresses, and a launch with no per-call bookkeeping.

use std::collections::HashMap;
use std::ffi::c_void;
use std::path::PathBuf;
use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, DeviceRepr, ValidAsZeroBits};
use cudarc::nvrtc::{CompileOptions, Ptx, compile_ptx_with_opts};

use sha2::{Digest, Sha256};

use super::{CudaError, MAX_SEQS};

/// The kernel source (see its header for the conventions): the decoder's kernels, then the
/// encoders'.
pub const SOURCE: &str = concat!(include_str!("kernels.cu"), include_str!("encoder.cu"));

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
    /// Whether it lives in host memory the device reads over the bus (see [`Buf::mapped_host`]).
    pub on_host: bool,
}

/// Page-locked host memory mapped for the device, freed (in its context) on drop.
struct MappedHost {
    ptr: *mut c_void,
    ctx: Arc<CudaContext>,
}

// SAFETY: the allocation is plain memory owned by this value alone; CUDA allows freeing it from
// any thread once the context is bound there.
unsafe impl Send for MappedHost {}
unsafe impl Sync for MappedHost {}

impl Drop for MappedHost {
    fn drop(&mut self) {
        if self.ctx.bind_to_thread().is_ok() {
            // SAFETY: `ptr` came from `malloc_host` and is freed once; nothing reads it after
            // the engine holding it is gone.
            let _ = unsafe { cudarc::driver::result::free_host(self.ptr) };
        }
    }
}

impl Buf {
    fn from_slice<T: DeviceRepr + Send + Sync + 'static>(s: CudaSlice<T>, stream: &CudaStream) -> Self {
        let ptr = s.device_ptr(stream).0;
        let len = s.len();
        Buf { _keep: Box::new(s), ptr, len, bytes: len * std::mem::size_of::<T>(), on_host: false }
    }

    /// A copy of `data` in page-locked host memory mapped into the device's address space:
    /// kernels read it over the bus, and it takes no device memory.
    pub fn mapped_host<T: DeviceRepr>(stream: &Arc<CudaStream>, data: &[T]) -> Result<Self, CudaError> {
        const DEVICEMAP: std::ffi::c_uint = 0x02;
        let ctx = stream.context().clone();
        ctx.bind_to_thread()?;
        let bytes = std::mem::size_of_val(data);
        // SAFETY: a fresh allocation of `bytes` (at least 1) is filled from `data` before any
        // kernel can read it; its device address comes from the same driver for the bound context.
        unsafe {
            let ptr = cudarc::driver::result::malloc_host(bytes.max(1), DEVICEMAP)?;
            let keep = MappedHost { ptr, ctx };
            std::ptr::copy_nonoverlapping(data.as_ptr() as *const u8, ptr as *mut u8, bytes);
            let mut dev = 0;
            cudarc::driver::sys::cuMemHostGetDevicePointer_v2(&mut dev, ptr, 0).result()?;
            Ok(Buf { _keep: Box::new(keep), ptr: dev, len: data.len(), bytes, on_host: true })
        }
    }

    /// Bytes of device memory it takes (0 when it lives on the host).
    pub fn device_bytes(&self) -> usize {
        if self.on_host { 0 } else { self.bytes }
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

/// Where compiled programs are kept: `$XCOMPOSER_KERNELS`, else `cuda-kernels` in the models
/// folder. Each file is named by a hash of the source, the options, the architecture and the
/// NVRTC and driver versions, so a changed kernel or toolkit never reads an old one.
pub fn ptx_cache_dir() -> PathBuf {
    std::env::var_os("XCOMPOSER_KERNELS").filter(|d| !d.is_empty()).map(PathBuf::from).unwrap_or_else(|| crate::fetch::models_dir().join("cuda-kernels"))
}

/// The cache file of one program.
fn ptx_cache_path(arch: &str, options: &[String]) -> PathBuf {
    let (mut major, mut minor, mut driver) = (0, 0, 0);
    // SAFETY: both calls only write the integers they are given; a failure leaves them 0, which
    // still gives a key of its own.
    unsafe {
        let _ = cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor);
        let _ = cudarc::driver::sys::cuDriverGetVersion(&mut driver);
    }
    let mut h = Sha256::new();
    h.update(SOURCE.as_bytes());
    h.update(format!("\0{arch}\0{}\0nvrtc {major}.{minor}\0driver {driver}", options.join(" ")).as_bytes());
    let key: String = h.finalize().iter().take(16).map(|b| format!("{b:02x}")).collect();
    ptx_cache_dir().join(format!("{key}.ptx"))
}

/// One program's entry points: its cached PTX when that loads, else compiled by NVRTC (and
/// cached; a cache that cannot be written only costs the next load its compile).
fn load_program(ctx: &Arc<CudaContext>, arch: &'static str, options: Vec<String>) -> Result<Vec<(String, CudaFunction)>, CudaError> {
    let path = ptx_cache_path(arch, &options);
    if let Ok(src) = std::fs::read_to_string(&path)
        && let Ok(funcs) = entry_points(ctx, Ptx::from_src(src))
    {
        return Ok(funcs);
    }
    let opts = CompileOptions { arch: Some(arch), options, ..Default::default() };
    let ptx = compile_ptx_with_opts(SOURCE, opts).map_err(|e| CudaError::Compile(e.to_string()))?;
    let src = ptx.to_src();
    if let Some(dir) = path.parent()
        && std::fs::create_dir_all(dir).is_ok()
    {
        let _ = crate::fetch::write_atomic(&path, src.as_bytes());
    }
    entry_points(ctx, Ptx::from_src(src))
}

/// CUDA device 0 and a stream of its own (the legacy default stream cannot be captured into a
/// graph), with cudarc's event tracking off: each user orders all its work on that one stream
/// and synchronises before reading back.
pub fn open_device() -> Result<(Arc<CudaContext>, Arc<CudaStream>), CudaError> {
    let ctx = CudaContext::new(0)?;
    // SAFETY: see above; every user keeps its work on the returned stream.
    unsafe { ctx.disable_event_tracking() };
    let stream = ctx.new_stream()?;
    Ok((ctx, stream))
}

/// NVRTC's name of the context's architecture (`sm_90`), kept for the process (NVRTC's options
/// borrow it).
fn device_arch(ctx: &Arc<CudaContext>) -> Result<&'static str, CudaError> {
    let (major, minor) = ctx.compute_capability()?;
    Ok(Box::leak(format!("sm_{major}{minor}").into_boxed_str()))
}

/// Loads a PTX module and every `.entry` in it.
fn entry_points(ctx: &Arc<CudaContext>, ptx: Ptx) -> Result<Vec<(String, CudaFunction)>, CudaError> {
    let names: Vec<String> = ptx.to_src().lines().filter_map(|l| l.trim().strip_prefix(".visible .entry ").map(|n| n.trim_end_matches('(').to_string())).collect();
    let module = ctx.load_module(ptx)?;
    names.into_iter().map(|n| Ok((n.clone(), module.load_function(&n)?))).collect()
}

/// The compiled module's functions by name.
pub struct Kernels {
    funcs: HashMap<String, CudaFunction>,
    stream: Arc<CudaStream>,
}

impl Kernels {
    /// Compiles [`SOURCE`] for the context's device (one program for the matrix-vector kernels
    /// of each row count and one for the rest, in parallel) and loads every entry point. A
    /// program compiled before by the same NVRTC for the same driver comes from [`ptx_cache_dir`].
    pub fn compile(ctx: &Arc<CudaContext>, stream: Arc<CudaStream>) -> Result<Self, CudaError> {
        let arch = device_arch(ctx)?;
        let defines: Vec<Option<usize>> = std::iter::once(None).chain((1..=MAX_SEQS).map(Some)).collect();
        let modules: Vec<Result<Vec<(String, CudaFunction)>, CudaError>> = std::thread::scope(|scope| {
            let jobs: Vec<_> = defines
                .iter()
                .map(|rows| {
                    scope.spawn(move || {
                        let mut options = vec!["--std=c++17".to_string()];
                        options.extend(rows.map(|m| format!("-DXC_GEMV_ROWS={m}")));
                        load_program(ctx, arch, options)
                    })
                })
                .collect();
            jobs.into_iter().map(|j| j.join().unwrap_or_else(|_| Err(CudaError::Compile("NVRTC panicked".into())))).collect()
        });
        let mut funcs = HashMap::new();
        for module in modules {
            funcs.extend(module?);
        }
        Ok(Kernels { funcs, stream })
    }

    /// The program without the matrix-vector kernels (everything the encoders use), compiled or
    /// read from [`ptx_cache_dir`].
    pub fn compile_base(ctx: &Arc<CudaContext>, stream: Arc<CudaStream>) -> Result<Self, CudaError> {
        let arch = device_arch(ctx)?;
        let funcs = load_program(ctx, arch, vec!["--std=c++17".to_string()])?.into_iter().collect();
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
