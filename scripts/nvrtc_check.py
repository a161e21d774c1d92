"""Compiles the CUDA kernels' source with NVRTC exactly as the CUDA path does at run time (to a
CUBIN for one compute capability; with -DGRU_CLUSTER_KERNELS for the cluster kernels), without a
GPU: catches what the host-C++ test of the same source cannot (CUDA-only syntax, inline PTX,
ptxas) and prints ptxas's register and spill report per kernel.

    python3 scripts/nvrtc_check.py LIBNVRTC SOURCE [ARCH[:cluster] ...]   # e.g. 80 90:cluster

With GRU_CUBIN_DIR set, each CUBIN is also written there (sm_90_cluster.cubin, ...), for reading
the SASS without a GPU, e.g. with the cuobjdump that the `triton` wheel ships:
    GRU_CUBIN_DIR=/tmp/sass python3 scripts/nvrtc_check.py ... 90:cluster
    venv/lib/python3.*/site-packages/triton/backends/nvidia/bin/cuobjdump -sass /tmp/sass/sm_90_cluster.cubin
"""
import ctypes
import os
import sys


def compile_cubin(nvrtc, source: bytes, arch: str, cluster: bool) -> tuple[bool, str, int]:
    """Compiles; returns (ok, log, CUBIN size) and writes the CUBIN under GRU_CUBIN_DIR if set."""
    prog = ctypes.c_void_p()
    rc = nvrtc.nvrtcCreateProgram(ctypes.byref(prog), source, b"gru.cu", 0, None, None)
    if rc != 0:
        return False, f"nvrtcCreateProgram failed: {rc}", 0
    opts = [f"--gpu-architecture=sm_{arch}".encode(), b"--ptxas-options=-v"]
    if cluster:
        opts.append(b"-DGRU_CLUSTER_KERNELS")
    argv = (ctypes.c_char_p * len(opts))(*opts)
    rc = nvrtc.nvrtcCompileProgram(prog, len(opts), argv)
    size = ctypes.c_size_t()
    nvrtc.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    nvrtc.nvrtcGetProgramLog(prog, log)
    cubin = 0
    if rc == 0:
        csize = ctypes.c_size_t()
        rc = nvrtc.nvrtcGetCUBINSize(prog, ctypes.byref(csize))
        cubin = csize.value if rc == 0 else 0
        out_dir = os.environ.get("GRU_CUBIN_DIR")
        if out_dir and cubin:
            image = ctypes.create_string_buffer(cubin)
            if nvrtc.nvrtcGetCUBIN(prog, image) == 0:
                os.makedirs(out_dir, exist_ok=True)
                name = f"sm_{arch}{'_cluster' if cluster else ''}.cubin"
                with open(os.path.join(out_dir, name), "wb") as f:
                    f.write(image.raw)
    nvrtc.nvrtcDestroyProgram(ctypes.byref(prog))
    return rc == 0 and cubin > 0, log.value.decode(errors="replace"), cubin


def main() -> int:
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    nvrtc = ctypes.CDLL(sys.argv[1])
    source = open(sys.argv[2], "rb").read()
    ok_all = True
    for spec in sys.argv[3:] or ["90:cluster"]:
        arch, _, what = spec.partition(":")
        ok, log, size = compile_cubin(nvrtc, source, arch, what == "cluster")
        label = f"sm_{arch}{' with cluster kernels' if what == 'cluster' else ''}"
        print(f"== NVRTC {label}: {'ok' if ok else 'FAILED'}, CUBIN {size} bytes")
        # ptxas -v: one "Compiling entry function" line then its registers / spills per kernel.
        for line in log.splitlines():
            if "error" in line.lower() or "warning" in line.lower() or not ok:
                print("  " + line)
            elif "Compiling entry function" in line or "registers" in line or "spill" in line:
                print("  " + line.replace("ptxas info    : ", ""))
        ok_all &= ok
    return 0 if ok_all else 1


if __name__ == "__main__":
    sys.exit(main())
