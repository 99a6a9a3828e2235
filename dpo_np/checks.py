"""Argument checks, in one place: what counts as an int, a number or a flag here.

Every public function and config validates its arguments through these, so a bad value is
refused at the call with the argument's name, never turned silently into something else:
``True`` is not the number 1, ``"False"`` is not a flag, ``nan`` is not a learning rate.

Each returns the value as a plain Python ``int``/``float``/``bool`` (NumPy scalars are
accepted and converted) and raises ``TypeError`` for the wrong kind of value, ``ValueError``
for a value out of range.
"""

import math
import numbers

import numpy as np


def _range_text(low, high, low_open, high_open):
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {low:g}"
    return f"{'<' if high_open else '<='} {high:g}"


def _in_range(x, low, high, low_open, high_open):
    return ((low is None or (x > low if low_open else x >= low))
            and (high is None or (x < high if high_open else x <= high)))


def integer(value, name, low=None, high=None, optional=False):
    """``value`` as an ``int`` (bools refused) within [low, high]; None passes when ``optional``."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        kind = "an int" + (" or None" if optional else "")
        raise TypeError(f"{name} must be {kind}, got {value!r} ({type(value).__name__})")
    value = int(value)
    if not _in_range(value, low, high, False, False):
        raise ValueError(f"{name} must be {_range_text(low, high, False, False)}, got {value}")
    return value


def number(value, name, low=None, high=None, low_open=False, high_open=False, optional=False):
    """``value`` as a finite ``float`` (bools and strings refused) within the given bounds.

    ``low_open``/``high_open`` exclude the bound itself: ``number(beta, "beta", 0, low_open=True)``
    asks for β > 0.
    """
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        kind = "a number" + (" or None" if optional else "")
        raise TypeError(f"{name} must be {kind}, got {value!r} ({type(value).__name__})")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if not _in_range(value, low, high, low_open, high_open):
        raise ValueError(f"{name} must be {_range_text(low, high, low_open, high_open)}, got {value:g}")
    return value


def positive(value, name):
    """A finite number > 0 (β, a temperature, a learning-rate peak)."""
    return number(value, name, low=0.0, low_open=True)


def beta(value, name="beta", dtype=np.float64):
    """β > 0 that arithmetic in ``dtype`` can carry: β itself and 1/β finite there. A β past the
    dtype's largest number (1e39 in float32) is inf in it, and a subnormal one (1e-320 in float64)
    has an infinite 1/β, so β·h, r/β or 1/(2β) would turn into inf and NaN without a word."""
    value = positive(value, name)
    info = np.finfo(dtype)
    if value > float(info.max) or 1.0 / value > float(info.max) or value < float(info.tiny):
        why = "is inf there" if value > float(info.max) else "has an infinite 1/β there"
        raise ValueError(f"{name}={value:g} does not fit {np.dtype(dtype).name} (finite from {float(info.tiny):.3g} to "
                         f"{float(info.max):.3g}): it {why}, so what is computed with it would be inf or NaN; "
                         f"choose a {name} inside that range" + (", or float64 inputs" if np.dtype(dtype) != np.float64
                                                                 else ""))
    return value


def flag(value, name):
    """``value`` if it is ``True`` or ``False``; anything else (1, "False", None) is a TypeError."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r} ({type(value).__name__})")
    return value


def choice(value, name, options):
    """``value`` if it is one of ``options`` (compared with ==), else a ValueError listing them."""
    if not isinstance(value, str) or value not in options:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, options))}, got {value!r}")
    return value


def name_mismatch(expected, got):
    """What differs between two collections of names ("missing [...], unexpected [...]", five of
    each at most), or None when they hold the same names: for parameter and state dicts."""
    missing = [k for k in expected if k not in got]
    extra = [k for k in got if k not in expected]
    if not (missing or extra):
        return None
    more = lambda names: "..." if len(names) > 5 else ""       # noqa: E731
    return f"missing {missing[:5]}{more(missing)}, unexpected {extra[:5]}{more(extra)}"
