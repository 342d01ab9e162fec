//! Matrix products through cuBLASLt, each shape's descriptors and chosen algorithm made once and
//! kept. On the H200 it picks the same `nvjet` kernels for CLIP's products as `cublasGemmEx`
//! does (and PyTorch), measured no faster; it is the way to the fused epilogues (bias, GELU)
//! that the encoder's element-wise passes could move into.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cudarc::cublaslt::{result as lt, sys};
use cudarc::driver::CudaStream;

use super::CudaError;
use super::kernels::Buf;

/// Workspace the heuristics may use (what cuBLAS recommends on Hopper).
const WORKSPACE: usize = 32 << 20;

/// A product in cuBLAS's column-major terms, `C[m, n] = op(A)[m, k] · B[k, n]` with
/// `op(A) = Aᵀ` when `a_t`, A and B in f16 (else f32), C in f32 when `c_f32` (else as A):
/// the key of its kept plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct LtShape {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub lda: usize,
    pub ldb: usize,
    pub ldc: usize,
    pub a_t: bool,
    pub f16: bool,
    pub c_f32: bool,
}

/// A shape's descriptors and algorithm.
struct Plan {
    desc: sys::cublasLtMatmulDesc_t,
    layouts: [sys::cublasLtMatrixLayout_t; 3],
    algo: sys::cublasLtMatmulAlgo_t,
}

/// A cuBLASLt handle on one stream, its workspace and the plans made so far.
pub(super) struct LtProducts {
    handle: sys::cublasLtHandle_t,
    stream: Arc<CudaStream>,
    workspace: Buf,
    plans: Mutex<HashMap<LtShape, Plan>>,
}

// SAFETY: the handle and the plans' descriptors are only used by `matmul`, which holds the
// plans' lock for the whole call, so no two threads use them at once.
unsafe impl Send for LtProducts {}
unsafe impl Sync for LtProducts {}

impl LtProducts {
    /// A handle and workspace for products queued on `stream`.
    pub fn new(stream: Arc<CudaStream>) -> Result<Self, CudaError> {
        let workspace = Buf::zeros::<u8>(&stream, WORKSPACE)?;
        Ok(LtProducts { handle: lt::create_handle()?, stream, workspace, plans: Mutex::new(HashMap::new()) })
    }

    /// Queues `C = op(A) · B` (f32 accumulation, no TF32) on the stream.
    pub fn matmul(&self, s: LtShape, a: u64, b: u64, c: u64) -> Result<(), CudaError> {
        let mut plans = self.plans.lock().unwrap_or_else(|e| e.into_inner());
        if let std::collections::hash_map::Entry::Vacant(e) = plans.entry(s) {
            e.insert(self.plan(s)?);
        }
        let p = &plans[&s];
        let (alpha, beta) = (1f32, 0f32);
        // SAFETY: A, B and C are live device buffers with the extents of `s` (the encoder
        // runtime checks its shapes), the plan was made for `s`, and the workspace is ours.
        unsafe {
            lt::matmul(
                self.handle,
                p.desc,
                &alpha as *const f32 as *const _,
                &beta as *const f32 as *const _,
                a as *const _,
                p.layouts[0],
                b as *const _,
                p.layouts[1],
                c as *const _,
                p.layouts[2],
                c as *mut _,
                p.layouts[2],
                &p.algo,
                self.workspace.ptr as *mut _,
                WORKSPACE,
                self.stream.cu_stream() as _,
            )?;
        }
        Ok(())
    }

    fn plan(&self, s: LtShape) -> Result<Plan, CudaError> {
        use sys::cudaDataType::{CUDA_R_16F, CUDA_R_32F};
        let ab = if s.f16 { CUDA_R_16F } else { CUDA_R_32F };
        let desc = lt::create_matmul_desc(sys::cublasComputeType_t::CUBLAS_COMPUTE_32F, CUDA_R_32F)?;
        // cublasOperation_t as an i32: CUBLAS_OP_N = 0, CUBLAS_OP_T = 1.
        let op = s.a_t as i32;
        let (rows_a, cols_a) = if s.a_t { (s.k, s.m) } else { (s.m, s.k) };
        let layouts = [
            lt::create_matrix_layout(ab, rows_a as u64, cols_a as u64, s.lda as i64)?,
            lt::create_matrix_layout(ab, s.k as u64, s.n as u64, s.ldb as i64)?,
            lt::create_matrix_layout(if s.c_f32 { CUDA_R_32F } else { ab }, s.m as u64, s.n as u64, s.ldc as i64)?,
        ];
        let pref = lt::create_matmul_pref()?;
        let bytes = WORKSPACE as u64;
        // SAFETY: the attributes' buffers are the sizes cuBLASLt documents (an operation as an
        // i32, a u64), and every descriptor was just created.
        let heuristic = unsafe {
            lt::set_matmul_desc_attribute(desc, sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA, &op as *const _ as *const _, std::mem::size_of_val(&op))?;
            lt::set_matmul_pref_attribute(pref, sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &bytes as *const u64 as *const _, 8)?;
            let h = lt::get_matmul_algo_heuristic(self.handle, desc, layouts[0], layouts[1], layouts[2], layouts[2], pref);
            lt::destroy_matmul_pref(pref)?;
            h?
        };
        Ok(Plan { desc, layouts, algo: heuristic.algo })
    }
}

impl Drop for LtProducts {
    fn drop(&mut self) {
        let plans = self.plans.get_mut().unwrap_or_else(|e| e.into_inner());
        // SAFETY: nothing uses the descriptors or the handle after this; errors on the way out
        // are ignored (the device may already be gone).
        unsafe {
            for p in plans.values() {
                let _ = lt::destroy_matmul_desc(p.desc);
                for l in p.layouts {
                    let _ = lt::destroy_matrix_layout(l);
                }
            }
            let _ = lt::destroy_handle(self.handle);
        }
    }
}
