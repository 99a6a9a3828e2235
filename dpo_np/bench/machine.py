"""What machine a number was measured on: CPU, cores, BLAS and its thread count, the vector code
the libraries run, array library.

Timings and even the last bits of a result depend on these (a BLAS run on two threads sums in
another order than on one), so every report that quotes a number says where it came from.
"""

import os
import platform

import numpy as np

from dpo_np import backend

THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
#: the variables that hold a library below the vector instructions the CPU has (read when each
#: library loads); benchmarks/without_avx512.sh sets them all to time an AVX-512 CPU without it
ISA_VARIABLES = ("OPENBLAS_CORETYPE", "NPY_DISABLE_CPU_FEATURES", "ATEN_CPU_CAPABILITY",
                 "MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA")


def cpu_model():
    """The CPU's marketing name (Linux /proc/cpuinfo, else platform), or "unknown"."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def vector_extensions():
    """Which of AVX2 and AVX-512 (foundation) the CPU reports (Linux /proc/cpuinfo), or None where
    that cannot be read. GEMMs and NumPy's loops run other kernels with AVX-512, so a ratio
    measured on one kind of CPU need not hold on the other."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return [name for name in ("avx2", "avx512f") if name in flags]
    except OSError:
        pass
    return None


def kernels():
    """The vector code the libraries run, which need not be all the CPU has: ``{"blas_kernels"}``
    (OpenBLAS's kernel family as threadpoolctl reads it, e.g. SkylakeX for AVX-512, Haswell or
    Zen for AVX2; None where unknown), ``{"numpy_simd"}`` (the SIMD targets NumPy dispatches to
    beyond its baseline) and ``{"limited_by"}`` (the ISA_VARIABLES set, with their values)."""
    out = {"blas_kernels": None, "numpy_simd": None,
           "limited_by": {name: os.environ[name] for name in ISA_VARIABLES if os.environ.get(name)}}
    info = _numpy_blas()
    if info and info.get("internal_api") == "openblas":
        out["blas_kernels"] = info.get("architecture")
    try:        # what np.show_runtime() prints as "found"; NumPy keeps it in a private module
        from numpy._core._multiarray_umath import __cpu_dispatch__, __cpu_features__
        out["numpy_simd"] = [name for name in __cpu_dispatch__ if __cpu_features__.get(name)]
    except ImportError:
        pass
    return out


def blas():
    """The BLAS NumPy was built with (name and version), read from NumPy's own build record."""
    try:
        info = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        return f"{info.get('name', '?')} {info.get('version', '')}".strip()
    except Exception:                      # older NumPy: no dict mode; the name is not essential
        return "unknown"


def _numpy_blas():
    """threadpoolctl's record of the BLAS NumPy loaded, or None (no threadpoolctl, or no BLAS it knows)."""
    try:
        import threadpoolctl
    except ImportError:
        return None
    blas = [i for i in threadpoolctl.threadpool_info() if i.get("user_api") == "blas"]
    blas.sort(key=lambda i: "numpy" not in i.get("filepath", ""))        # NumPy's own BLAS first
    return blas[0] if blas else None


def blas_threads():
    """How many threads BLAS uses: the count in force as threadpoolctl reads it from the library
    (where threadpoolctl is installed: a limit set at run time is then seen too), else the first
    thread variable set, else the library's default (the cores this process may use)."""
    info = _numpy_blas()
    if info:
        return {"threads": info["num_threads"], "from": "in force (threadpoolctl)"}
    for name in THREAD_VARIABLES:
        if os.environ.get(name):
            return {"threads": int(os.environ[name]), "from": name}
    return {"threads": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "from": "library default (all usable cores)"}


def load_average():
    """The 1-, 5- and 15-minute load averages (runnable processes), or None where the OS has none.
    A load near the core count means other work shared the cores: timings taken then are not results."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def describe():
    """A dict: cpu, cores, python, numpy, blas, blas_threads, array library and its version, GPU,
    and the load average when it was asked."""
    xp = backend.xp()
    out = {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(),
           "numpy": np.__version__, "blas": blas(), "blas_threads": blas_threads(),
           "array_library": backend.backend_name(), "array_library_version": xp.__version__,
           "vector_extensions": vector_extensions(), "kernels": kernels(), "load_average": load_average()}
    if backend.backend_name() == "cupy":
        props = xp.cuda.runtime.getDeviceProperties(xp.cuda.Device().id)
        out["gpu"] = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    return out


def one_line(info=None):
    info = describe() if info is None else info
    t = info["blas_threads"]
    gpu = f", GPU {info['gpu']}" if "gpu" in info else ""
    ext = info.get("vector_extensions")
    simd = "" if ext is None else (" with " + ", ".join(e.upper().replace("AVX512F", "AVX-512") for e in ext)
                                   if ext else " without AVX2 or AVX-512")
    k = info.get("kernels")
    if k:
        held = f"held below that by {', '.join(k['limited_by'])}: " if k["limited_by"] else ""
        gemm = f"OpenBLAS {k['blas_kernels']} kernels" if k["blas_kernels"] else "BLAS kernels unknown"
        simd += f" ({held}{gemm}, NumPy SIMD {', '.join(k['numpy_simd'] or ['baseline only'])})"
    load = info.get("load_average")
    busy = f"; load average {load[0]:.2f}" if load else ""
    return (f"{info['cpu']}{simd}, {info['cores']} cores; {info['blas']} on {t['threads']} thread(s) ({t['from']}); "
            f"{info['array_library']} {info['array_library_version']}{gpu}{busy}")
