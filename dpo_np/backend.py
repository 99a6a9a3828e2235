"""Where arrays live: NumPy by default, CuPy on request, or NumPy under CuPy's rules.

This is the only module that knows which array library is in use (the
``get_array_module`` idea of Chainer/DeZero, kept to one place). Everything
else asks it *at call time*, through ``xp()``, so a notebook can call
``set_backend("cupy")`` after importing the package and every function follows.

The backend is chosen by ``set_backend(name)`` or, at first use, by the
environment variable ``DPO_NP_BACKEND`` ("numpy", "cupy" or "strict").

"strict" computes with NumPy but hands out ``StrictArray``s, which refuse what
a CuPy array refuses: becoming a host array implicitly (``np.asarray(x)``,
``np.exp(x)``, ``np.sum(x)``, arithmetic with a NumPy array). Code that runs
under "strict" keeps its arrays on the device under "cupy" too, and that is
tested on machines without a GPU. Leaving the device is explicit —
``to_numpy(x)``, ``x.get()``, ``x.item()``, ``x.tolist()``, ``float``/``int``/
``bool`` of a one-element array, printing one — and ``host_transfers()``
counts every such move, so the syncs per training step can be measured.

Randomness is always drawn on the host with NumPy's PCG64 from an explicit
seed and then moved to the device, so one seed gives the same numbers on all
backends.
"""

import operator
import os
import types

import numpy as np

BACKENDS = ("numpy", "cupy", "strict")
_GPU_FIX = 'install the GPU extra with: pip install "dpo-np[gpu]"'

_module = None          # the array module in use, chosen lazily
_name = None            # its name in BACKENDS
_default_dtype = np.float32
_transfers = 0          # device → host moves so far (see host_transfers)


def _load(name):
    if name == "numpy":
        return np
    if name == "strict":
        return strict_xp
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
    """Use ``name`` ("numpy", "cupy" or "strict") for every array made from now on."""
    global _module, _name
    name = str(name).lower()
    _module = _load(name)
    _name = name
    return _module


def xp():
    """The array module in use (``numpy``, ``cupy``, or the strict stand-in for CuPy)."""
    if _module is None:
        set_backend(os.environ.get("DPO_NP_BACKEND", "numpy").strip().lower() or "numpy")
    return _module


def backend_name():
    xp()
    return _name


def array_module(a):
    """The module that computes on ``a``: NumPy for a host array or number, else ``xp()``.

    For the few functions that serve host arrays too (generation samples on the host),
    as CuPy's ``get_array_module``.
    """
    return np if isinstance(a, (np.ndarray, np.generic, int, float)) else xp()


def to_numpy(a, dtype=None):
    """A NumPy copy (or view) of ``a``, wherever it lives: the one named device → host transfer;
    with ``dtype``, in that dtype (``to_numpy(x, np.float64)`` for a host table of float64)."""
    if isinstance(a, StrictArray):
        a = a.get()
    elif not isinstance(a, np.ndarray) and getattr(a, "get", None) is not None \
            and not isinstance(a, (np.generic, float, int)):
        _counted()                      # cupy.ndarray -> host
        a = a.get()
    return np.asarray(a, dtype=dtype)


def host_transfers():
    """How many device → host transfers have run so far; take the difference around a block.

    Exact under "strict" (every way off the device is counted); under "cupy" it counts only
    ``to_numpy``, and under "numpy" there is no device to leave.
    """
    return _transfers


def asarray(a, dtype=None):
    """``a`` as an array of the backend in use (host → device)."""
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
    elif isinstance(target, StrictArray):
        strict_xp.add.at(target, index, values)
    else:
        import cupyx
        cupyx.scatter_add(target, index, values)
    return target


# -- the strict backend ---------------------------------------------------------------------------

_IMPLICIT = ("Implicit conversion to a NumPy array is not allowed. "
             "Please use `.get()` to construct a NumPy array explicitly.")
_HOST_ARRAY = ("{where} got a NumPy (host) array where a device array belongs; "
               "move it with backend.asarray first, as CuPy requires")
# attributes that would hand out host memory without a transfer
_HOST_VIEWS = frozenset({"data", "ctypes", "flat", "tobytes", "tofile", "dump", "dumps"})
# the only functions that take host arrays: they are the way onto the device
_HOST_TO_DEVICE = frozenset({"asarray", "array", "asanyarray", "ascontiguousarray"})


def _counted():
    global _transfers
    _transfers += 1


def _wrap(x):
    """NumPy's results as device arrays (a NumPy scalar becomes a 0-d array, as in CuPy)."""
    if isinstance(x, np.ndarray):
        return StrictArray(x)
    if isinstance(x, np.generic):
        return StrictArray(np.asarray(x))
    if type(x) in (tuple, list):
        return type(x)(_wrap(v) for v in x)
    return x


def _unwrap(x, host_ok=False, f=None):
    """The NumPy arrays behind ``x`` (nested in tuples and lists); a host array only if ``host_ok``."""
    if type(x) is StrictArray:
        return x._a
    if isinstance(x, np.ndarray) and not host_ok:
        raise TypeError(_HOST_ARRAY.format(where=f"xp.{getattr(f, '__name__', 'function')}()"))
    if type(x) in (tuple, list):
        return type(x)(_unwrap(v, host_ok, f) for v in x)
    return x


class StrictArray:
    """A NumPy array that behaves like a CuPy one where CuPy is stricter: the "strict" backend.

    It holds an ``ndarray`` and delegates to it, but is not one (a subclass could not refuse
    ``np.asarray``): it has no ``__array_interface__`` or ``__array_struct__``, its ``__array__``
    raises CuPy's error, and NumPy's functions and ufuncs refuse it. What CuPy allows still
    works: indexing, iterating, arithmetic with numbers and other device arrays, ``.shape``,
    ``.T``, methods such as ``.sum()`` and ``.astype()``.
    """

    __slots__ = ("_a",)
    __array_ufunc__ = None      # np.exp(x) refuses; ndarray + x defers to our operators, which refuse
    __hash__ = None

    def __init__(self, a):
        self._a = a

    def __array__(self, dtype=None, copy=None):
        raise TypeError(_IMPLICIT)

    def __array_function__(self, func, types, args, kwargs):
        raise TypeError(f"numpy.{func.__name__} was called on a device array; use backend.xp()."
                        f"{func.__name__}, or move the array with backend.to_numpy")

    def __getattr__(self, name):
        # reached only for what the class lacks: shape, dtype, T, sum, reshape, astype, ...
        if name.startswith("_") or name in _HOST_VIEWS:
            raise AttributeError(f"a device array has no {name!r} (move it with backend.to_numpy)")
        attr = getattr(self._a, name)
        return _StrictFunction(attr) if callable(attr) else _wrap(attr)

    # -- the explicit ways to the host, each one counted --------------------------------------
    def get(self):
        """A host copy, as ``cupy.ndarray.get()``."""
        _counted()
        return self._a.copy()

    def tolist(self):
        _counted()
        return self._a.tolist()

    def _one(self):
        # CuPy syncs for float(x)/int(x)/bool(x) of a one-element array of any ndim; other sizes
        # are left to NumPy, which refuses them
        if self._a.size != 1:
            return self._a
        _counted()
        return self._a.reshape(())

    def item(self):
        return self._one().item()

    def __float__(self):
        return float(self._one())

    def __int__(self):
        return int(self._one())

    def __bool__(self):
        return bool(self._one())

    def __complex__(self):
        return complex(self._one())

    def __repr__(self):
        _counted()
        return repr(self._a)

    def __str__(self):
        _counted()
        return str(self._a)

    def __format__(self, spec):
        _counted()
        return format(self._a, spec)

    # -- containers and copies --------------------------------------------------------------------
    def __len__(self):
        return len(self._a)

    def __iter__(self):
        return map(_wrap, self._a)

    def __getitem__(self, index):
        return _wrap(self._a[_unwrap(index, host_ok=True)])

    def __setitem__(self, index, value):
        self._a[_unwrap(index, host_ok=True)] = _unwrap(value, host_ok=True)

    def __copy__(self):
        return StrictArray(self._a.copy())

    def __deepcopy__(self, memo):
        return StrictArray(self._a.copy())

    def __reduce__(self):
        return StrictArray, (self._a,)


def _operand(x):
    """The NumPy value behind an operator's other operand; NotImplemented lets e.g. a Tensor answer."""
    if type(x) is StrictArray:
        return x._a
    if isinstance(x, np.ndarray):
        raise TypeError(_HOST_ARRAY.format(where="an arithmetic operator"))
    if x is None or isinstance(x, (int, float, complex, np.generic)):
        return x
    return NotImplemented


def _operator(op, reflected=False, inplace=False):
    def method(self, other):
        o = _operand(other)
        if o is NotImplemented:
            return NotImplemented
        if inplace:
            op(self._a, o)          # NumPy's in-place operator writes into self._a
            return self
        return _wrap(op(o, self._a) if reflected else op(self._a, o))
    return method


for _op in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "and", "or", "xor",
            "lshift", "rshift"):
    _fn = _op + "_" if _op in ("and", "or") else _op
    setattr(StrictArray, f"__{_op}__", _operator(getattr(operator, _fn)))
    setattr(StrictArray, f"__r{_op}__", _operator(getattr(operator, _fn), reflected=True))
    setattr(StrictArray, f"__i{_op}__", _operator(getattr(operator, f"i{_op}"), inplace=True))
for _op in ("eq", "ne", "lt", "le", "gt", "ge"):
    setattr(StrictArray, f"__{_op}__", _operator(getattr(operator, _op)))
for _op in ("neg", "pos", "abs", "invert"):
    setattr(StrictArray, f"__{_op}__", lambda self, _f=getattr(operator, _op): _wrap(_f(self._a)))
del _op, _fn


class _StrictFunction:
    """A NumPy function, ufunc or array method that takes and returns device arrays."""

    __slots__ = ("_f", "_host_ok")

    def __init__(self, f, host_ok=False):
        self._f, self._host_ok = f, host_ok

    def __call__(self, *args, **kwargs):
        args = _unwrap(args, self._host_ok, self._f)
        kwargs = {k: _unwrap(v, self._host_ok, self._f) for k, v in kwargs.items()}
        return _wrap(self._f(*args, **kwargs))

    def __getattr__(self, name):
        # a ufunc's .at, .reduce, .outer, and plain attributes such as __name__ or nin
        attr = getattr(object.__getattribute__(self, "_f"), name)
        return _StrictFunction(attr) if callable(attr) and not isinstance(attr, type) else attr


class _StrictModule:
    """The array module of the strict backend: NumPy's names, each looked up once and delegated.

    Functions and ufuncs unwrap their ``StrictArray`` arguments, call NumPy and wrap the
    result; submodules (``linalg``, ``random``) are delegated the same way; types, dtypes and
    constants (``float32``, ``finfo``, ``errstate``, ``pi``) are NumPy's own.
    """

    def __init__(self, module):
        self._module = module
        self.__name__ = f"strict {module.__name__}"

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        attr = getattr(self._module, name)
        if isinstance(attr, types.ModuleType):
            attr = _StrictModule(attr)
        elif callable(attr) and not isinstance(attr, type):
            attr = _StrictFunction(attr, host_ok=name in _HOST_TO_DEVICE)
        setattr(self, name, attr)
        return attr


strict_xp = _StrictModule(np)
strict_xp.ndarray = StrictArray         # isinstance(x, xp.ndarray) asks about device arrays
strict_xp.__version__ = np.__version__
