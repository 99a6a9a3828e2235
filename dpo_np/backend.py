"""Where arrays live: NumPy by default, CuPy on request.

This is the only module that knows which array library is in use (the
``get_array_module`` idea of Chainer/DeZero, kept to one place). Everything
else asks it *at call time*, through ``xp()``, so a notebook can call
``set_backend("cupy")`` after importing the package and every function follows.

The backend is chosen by ``set_backend(name)`` or, at first use, by the
environment variable ``DPO_NP_BACKEND`` ("numpy" or "cupy").

Randomness is always drawn on the host with NumPy's PCG64 from an explicit
seed and then moved to the device, so one seed gives the same numbers on both
backends.
"""

import os

import numpy as np

BACKENDS = ("numpy", "cupy")
_GPU_FIX = 'install the GPU extra with: pip install "dpo-np[gpu]"'

_module = None          # the array module in use, chosen lazily
_default_dtype = np.float32


def _load(name):
    if name == "numpy":
        return np
    if name != "cupy":
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    try:
        import cupy
    except ImportError as err:
        raise RuntimeError(f"backend 'cupy' asked for, but CuPy is not installed; {_GPU_FIX}") from err
    try:
        n_gpus = cupy.cuda.runtime.getDeviceCount()
    except Exception as err:  # CUDA driver missing or broken
        raise RuntimeError(f"backend 'cupy' asked for, but CUDA is not usable ({err}); "
                           f"check the NVIDIA driver, or {_GPU_FIX} matching your CUDA") from err
    if n_gpus < 1:
        raise RuntimeError("backend 'cupy' asked for, but no GPU is visible "
                           "(check CUDA_VISIBLE_DEVICES and the NVIDIA driver)")
    return cupy


def set_backend(name):
    """Use ``name`` ("numpy" or "cupy") for every array made from now on."""
    global _module
    _module = _load(str(name).lower())
    return _module


def xp():
    """The array module in use (``numpy`` or ``cupy``)."""
    global _module
    if _module is None:
        _module = _load(os.environ.get("DPO_NP_BACKEND", "numpy").strip().lower() or "numpy")
    return _module


def backend_name():
    return "numpy" if xp() is np else "cupy"


def to_numpy(a):
    """A NumPy copy (or view) of ``a``, wherever it lives."""
    if isinstance(a, np.ndarray):
        return a
    get = getattr(a, "get", None)       # cupy.ndarray -> host
    if get is not None and not isinstance(a, (np.generic, float, int)):
        return get()
    return np.asarray(a)


def asarray(a, dtype=None):
    """``a`` as an array of the backend in use."""
    return xp().asarray(a, dtype=dtype)


def rng(seed):
    """A seeded NumPy generator (host side); pass what it draws through ``asarray``."""
    if seed is None:
        raise ValueError("seed must be an int: dpo_np draws random numbers only from an explicit seed")
    return np.random.default_rng(seed)


def default_dtype():
    """The floating dtype new parameters get (float32 unless changed)."""
    return _default_dtype


def set_default_dtype(dtype):
    global _default_dtype
    dtype = np.dtype(dtype)
    if dtype.kind != "f":
        raise ValueError(f"dtype must be a floating type, got {dtype}")
    _default_dtype = dtype.type


def scatter_add(target, index, values):
    """``target[index] += values`` with repeated indices accumulated (np.add.at)."""
    if isinstance(target, np.ndarray):
        np.add.at(target, index, values)
    else:
        import cupyx
        cupyx.scatter_add(target, index, values)
    return target
