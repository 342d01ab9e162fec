#!/usr/bin/env python3
"""Compiles the CUDA engine's kernel source (crates/llm/src/cuda/kernels.cu + encoder.cu) with
NVRTC as the engine does at load, for every program it builds (the base one and the matrix-vector
kernels for 1..8 rows), on a machine without a GPU: NVRTC comes from the nvidia-cuda-nvrtc wheel
(fetched once with `pip download` into $XCOMPOSER_NVRTC, default ~/.cache/xcomposer/nvrtc).
Prints NVRTC's log and exits 1 when a program does not compile; ARCH (default compute_90, the
H200) picks the virtual architecture."""
import ctypes, glob, os, subprocess, sys, zipfile

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
cache = os.environ.get("XCOMPOSER_NVRTC") or os.path.expanduser("~/.cache/xcomposer/nvrtc")
libs = glob.glob(os.path.join(cache, "nvidia/*/lib/libnvrtc.so.*"))
if not libs:
    os.makedirs(cache, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", cache, "nvidia-cuda-nvrtc"], check=True)
    for wheel in glob.glob(os.path.join(cache, "*.whl")):
        zipfile.ZipFile(wheel).extractall(cache)
    libs = glob.glob(os.path.join(cache, "nvidia/*/lib/libnvrtc.so.*"))
lib = ctypes.CDLL(sorted(libs)[0])
src = "".join(open(os.path.join(root, "crates/llm/src/cuda", f)).read() for f in ("kernels.cu", "encoder.cu"))
arch = os.environ.get("ARCH", "compute_90")
failed = False
for rows in [None] + list(range(1, 9)):
    prog = ctypes.c_void_p()
    if lib.nvrtcCreateProgram(ctypes.byref(prog), src.encode(), b"kernels.cu", 0, None, None) != 0:
        sys.exit("nvrtcCreateProgram failed")
    opts = [b"--std=c++17", f"-arch={arch}".encode()] + ([f"-DXC_GEMV_ROWS={rows}".encode()] if rows else [])
    rc = lib.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts))
    n = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(n))
    log = ctypes.create_string_buffer(n.value)
    lib.nvrtcGetProgramLog(prog, log)
    name = "base program" if rows is None else f"XC_GEMV_ROWS={rows}"
    if rc != 0 or log.value.strip():
        print(f"{name}: {'error' if rc else 'warnings'}\n{log.value.decode()}")
    failed |= rc != 0
    print(f"{name}: {'FAILED' if rc else 'compiled'}")
sys.exit(1 if failed else 0)
