"""The safetensors file format, read and written with NumPy alone.

A ``.safetensors`` file is three parts:

    8 bytes     N, the header's length, an unsigned little-endian 64-bit integer
    N bytes     the header: a JSON object, UTF-8, possibly padded with spaces
                {"__metadata__": {str: str},                       (optional)
                 name: {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}, ...}
    the rest    the data: every tensor's raw little-endian, row-major bytes, back to back;
                ``data_offsets`` count from the start of the data

Nothing in it is executable (unlike a torch.save archive), but the header can lie. So ``read_header``
checks all of it against the file's size before one byte of data is read: each tensor's
shape × item size must equal its byte range, the ranges must tile the data exactly (from 0, no
overlap, no gap, nothing after the last), and the header itself must fit in the file. Only then
does ``read_safetensors`` read, each tensor into an array of exactly its validated size, so it
never reads out of bounds and never allocates more than the file's size implies.
"""

import json
import math
import os
import struct

import numpy as np

from dpo_np import backend
from dpo_np.files import DuplicateKeyError, atomic_write, loads_json

# safetensors dtype name -> little-endian NumPy dtype it is stored as. BF16 has no NumPy type:
# it is read as uint16 and widened to float32 (it is float32's upper half).
DTYPES = {"BOOL": "u1", "U8": "u1", "I8": "i1", "U16": "<u2", "I16": "<i2", "F16": "<f2",
          "BF16": "<u2", "U32": "<u4", "I32": "<i4", "F32": "<f4", "U64": "<u8", "I64": "<i8",
          "F64": "<f8"}
NAMES = {np.dtype(np.bool_): "BOOL", np.dtype(np.uint8): "U8", np.dtype(np.int8): "I8",
         np.dtype(np.uint16): "U16", np.dtype(np.int16): "I16", np.dtype(np.float16): "F16",
         np.dtype(np.uint32): "U32", np.dtype(np.int32): "I32", np.dtype(np.float32): "F32",
         np.dtype(np.uint64): "U64", np.dtype(np.int64): "I64", np.dtype(np.float64): "F64"}
MAX_HEADER = 100_000_000       # the reference implementation's limit, so no header is read whole for nothing


class SafetensorsError(ValueError):
    """A file that is not a well-formed safetensors file; the message names the file and the tensor."""


def _is_int(x):
    return isinstance(x, int) and not isinstance(x, bool)


def _check_entry(name, entry):
    """(dtype, shape, begin, end) of one header entry, or a message of what is wrong with it."""
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        keys = sorted(entry) if isinstance(entry, dict) else type(entry).__name__
        raise SafetensorsError(f"tensor {name!r}: the entry must have exactly 'dtype', 'shape' and "
                               f"'data_offsets', got {keys}")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype not in DTYPES:
        raise SafetensorsError(f"tensor {name!r}: unknown dtype {dtype!r} (this reader knows "
                               f"{', '.join(DTYPES)})")
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise SafetensorsError(f"tensor {name!r}: shape must be a list of ints >= 0, got {shape!r}")
    if (not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_int(o) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1]):
        raise SafetensorsError(f"tensor {name!r}: data_offsets must be [begin, end] with "
                               f"0 <= begin <= end, got {offsets!r}")
    begin, end = offsets
    nbytes = math.prod(shape) * np.dtype(DTYPES[dtype]).itemsize    # a Python int: cannot overflow
    if end - begin != nbytes:
        raise SafetensorsError(f"tensor {name!r}: shape {shape} of {dtype} is {nbytes} bytes, but "
                               f"data_offsets [{begin}, {end}] hold {end - begin}")
    return dtype, tuple(shape), begin, end


def read_header(path):
    """The validated header of the safetensors file ``path``.

    Returns ``(tensors, metadata, data_start)``: ``tensors`` maps each name to ``(dtype, shape,
    begin, end)`` with ``begin``/``end`` counted from ``data_start``, the file offset of the
    data; ``metadata`` is the ``__metadata__`` dict (empty if absent). Reads only the first
    8 + N bytes. Raises ``SafetensorsError`` naming the file, the tensor and what does not fit.
    """
    path = os.fspath(path)
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        if size < 8:
            raise SafetensorsError(f"{path}: {size} bytes, too short for the 8-byte header length")
        (n,) = struct.unpack("<Q", f.read(8))
        if n > size - 8:
            raise SafetensorsError(f"{path}: the header claims {n} bytes, but the file has only "
                                   f"{size - 8} after the length")
        if n > MAX_HEADER:
            raise SafetensorsError(f"{path}: a header of {n} bytes is over the {MAX_HEADER}-byte limit")
        raw = f.read(n)
    try:
        header = loads_json(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SafetensorsError(f"{path}: the header is not UTF-8 JSON ({err})") from None
    except DuplicateKeyError as err:
        raise SafetensorsError(f"{path}: the header names {str(err).split()[2]} twice") from None
    if not isinstance(header, dict):
        raise SafetensorsError(f"{path}: the header must be a JSON object, got {type(header).__name__}")
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise SafetensorsError(f"{path}: '__metadata__' must map strings to strings, got {metadata!r}")
    data_size = size - 8 - n
    try:
        tensors = {name: _check_entry(name, entry) for name, entry in header.items()}
        # the byte ranges must tile [0, data_size): sorted by start, each begins where the last ended
        at, last = 0, None
        for name, (_, _, begin, end) in sorted(tensors.items(), key=lambda t: (t[1][2], t[1][3])):
            if end > data_size:
                raise SafetensorsError(f"tensor {name!r}: data_offsets [{begin}, {end}] run past the end "
                                       f"of the data ({data_size} bytes)")
            if begin < at:
                raise SafetensorsError(f"tensor {name!r}: data_offsets [{begin}, {end}] overlap those of "
                                       f"{last!r}, which end at {at}")
            if begin > at:
                raise SafetensorsError(f"tensor {name!r}: data_offsets [{begin}, {end}] leave a gap of "
                                       f"{begin - at} bytes after {last!r} (or the start of the data)")
            at, last = end, name
        if at != data_size:
            raise SafetensorsError(f"the tensors end at byte {at} of the data, but the data has "
                                   f"{data_size} bytes: {data_size - at} bytes belong to no tensor")
    except SafetensorsError as err:
        raise SafetensorsError(f"{path}: {err}") from None
    return tensors, metadata, 8 + n


def read_safetensors(path, names=None):
    """{name: NumPy array} of the safetensors file ``path`` (or only ``names``), after
    ``read_header`` has checked the whole header against the file.

    Each array is native-endian, writable and owns its memory; BF16 is widened to float32,
    everything else keeps its dtype (BOOL bytes other than 0 and 1 are refused).
    """
    path = os.fspath(path)
    tensors, _, start = read_header(path)
    if names is not None:
        unknown = [k for k in names if k not in tensors]
        if unknown:
            raise KeyError(f"{path}: no tensors named {unknown}")
        tensors = {k: tensors[k] for k in names}
    out = {}
    with open(path, "rb") as f:
        for name, (dtype, shape, begin, end) in tensors.items():
            a = np.empty(shape, dtype=DTYPES[dtype])           # end - begin bytes, validated above
            f.seek(start + begin)
            if end > begin and f.readinto(memoryview(a).cast("B")) != end - begin:
                raise SafetensorsError(f"{path}: tensor {name!r}: the file ended early (it changed "
                                       f"while being read?)")
            if dtype == "BF16":
                a = (a.astype(np.uint32) << 16).view(np.float32)
            elif dtype == "BOOL":
                if a.size and a.max() > 1:
                    raise SafetensorsError(f"{path}: tensor {name!r}: BOOL bytes must be 0 or 1, "
                                           f"found {int(a.max())}")
                a = a.view(np.bool_)
            out[name] = a.astype(a.dtype.newbyteorder("="), copy=False)
    return out


def write_safetensors(path, tensors, metadata=None):
    """Write {name: array} to ``path`` as a safetensors file, atomically (``files.atomic_write``).

    Tensors are laid out in name order; the header is padded with spaces to a multiple of 8
    bytes so every buffer starts 8-byte aligned, as the reference writer does. ``metadata`` is
    an optional {str: str} (transformers wants ``{"format": "pt"}``).
    """
    if not isinstance(tensors, dict):
        raise TypeError(f"tensors must be a dict {{name: array}}, got {type(tensors).__name__}")
    metadata = {} if metadata is None else metadata
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                 for k, v in metadata.items()):
        raise TypeError(f"metadata must be a dict of str to str, got {metadata!r}")
    arrays, header, at = {}, {}, 0
    if metadata:
        header["__metadata__"] = metadata
    for name in sorted(tensors):
        if not isinstance(name, str) or not name or name == "__metadata__":
            raise ValueError(f"tensors: {name!r} cannot be a tensor name")
        a = np.asarray(backend.to_numpy(tensors[name]))
        kind = NAMES.get(a.dtype.newbyteorder("="))
        if kind is None:
            raise TypeError(f"tensors[{name!r}]: dtype {a.dtype} has no safetensors name "
                            f"(written: {', '.join(map(str, NAMES))})")
        arrays[name] = a = a.astype(a.dtype.newbyteorder("<"), order="C", copy=False)   # 0-d stays 0-d
        header[name] = {"dtype": kind, "shape": list(a.shape), "data_offsets": [at, at + a.nbytes]}
        at += a.nbytes
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    with atomic_write(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for a in arrays.values():
            if a.nbytes:
                f.write(memoryview(a).cast("B"))
