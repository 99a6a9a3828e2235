"""The safetensors format: what the reference package writes reads back exactly and the other
way round, and a header that lies is refused, naming the file and the tensor, before a byte of
data is read."""

import builtins
import json
import struct
import tracemalloc

import numpy as np
import pytest

import dpo_np.safetensors as st
from dpo_np.safetensors import SafetensorsError, read_header, read_safetensors, write_safetensors

RNG = np.random.default_rng(0)
TENSORS = {
    "wte.weight": RNG.normal(size=(5, 3)).astype(np.float32),
    "h.0.attn.c_attn.bias": RNG.normal(size=9),                      # float64
    "half": RNG.normal(size=(2, 2)).astype(np.float16),
    "ids": np.arange(-3, 4, dtype=np.int64),
    "small_ids": np.arange(6, dtype=np.int32).reshape(2, 3),
    "mask": np.array([[True, False], [False, True]]),
    "bytes": np.arange(4, dtype=np.uint8),
    "scalar": np.array(2.5, dtype=np.float32),                       # 0-d stays 0-d
    "empty": np.zeros((0, 4), dtype=np.float32),
    "transposed": RNG.normal(size=(3, 4)).astype(np.float32).T,      # not C-contiguous
    "big_endian": RNG.normal(size=3).astype(">f8"),
}


def _same(a, b):
    return a.shape == b.shape and a.dtype == b.dtype.newbyteorder("=") and np.array_equal(a, b)


def test_write_then_read_gives_every_tensor_back_bit_for_bit(tmp_path):
    path = tmp_path / "t.safetensors"
    write_safetensors(path, TENSORS, metadata={"format": "pt"})
    back = read_safetensors(path)
    assert back.keys() == TENSORS.keys()
    for name, a in TENSORS.items():
        assert _same(back[name], a), name
        assert back[name].flags.writeable and back[name].dtype.isnative
    tensors, metadata, start = read_header(path)
    assert metadata == {"format": "pt"} and start % 8 == 0          # buffers 8-byte aligned
    assert tensors["wte.weight"][:2] == ("F32", (5, 3))
    assert read_safetensors(path, names=["ids"]).keys() == {"ids"}
    with pytest.raises(KeyError, match="nope"):
        read_safetensors(path, names=["nope"])


def test_files_of_the_reference_package_read_and_ours_read_in_it(tmp_path):
    numpy_api = pytest.importorskip("safetensors.numpy")
    native = {k: v.astype(v.dtype.newbyteorder("="), order="C") for k, v in TENSORS.items()}
    theirs = tmp_path / "theirs.safetensors"
    numpy_api.save_file(native, str(theirs), metadata={"format": "np"})
    back = read_safetensors(theirs)
    assert all(_same(back[k], v) for k, v in TENSORS.items())
    assert read_header(theirs)[1] == {"format": "np"}
    ours = tmp_path / "ours.safetensors"
    write_safetensors(ours, TENSORS)
    back = numpy_api.load_file(str(ours))
    assert back.keys() == TENSORS.keys() and all(_same(back[k], v) for k, v in TENSORS.items())


def _craft(path, header, data=b"", length=None):
    raw = json.dumps(header).encode() if not isinstance(header, bytes) else header
    path.write_bytes(struct.pack("<Q", len(raw) if length is None else length) + raw + data)
    return path


def test_bf16_is_widened_to_float32_exactly(tmp_path):
    x = RNG.normal(size=(2, 3)).astype(np.float32)
    upper = (x.view(np.uint32) >> 16).astype("<u2")          # bfloat16 is float32's upper half
    path = _craft(tmp_path / "bf16.safetensors",
                  {"x": {"dtype": "BF16", "shape": [2, 3], "data_offsets": [0, 12]}}, upper.tobytes())
    y = read_safetensors(path)["x"]
    assert y.dtype == np.float32 and np.array_equal(y.view(np.uint32), upper.astype(np.uint32) << 16)
    assert np.allclose(y, x, rtol=2 ** -7)


def test_bf16_written_by_torch_reads_as_its_float32_values(tmp_path):
    torch = pytest.importorskip("torch")
    save_file = pytest.importorskip("safetensors.torch").save_file
    x = torch.randn(4, 5, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    save_file({"x": x}, str(tmp_path / "t.safetensors"))
    assert np.array_equal(read_safetensors(tmp_path / "t.safetensors")["x"], x.float().numpy())


class _Recorder:
    """A file that notes the furthest byte any read reached."""
    def __init__(self, f, log):
        self._f, self._log = f, log

    def _note(self, n):
        self._log.append(self._f.tell() + n)

    def read(self, n=-1):
        self._note(n)
        return self._f.read(n)

    def readinto(self, b):
        self._note(len(memoryview(b).cast("B")))
        return self._f.readinto(b)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


ENTRY = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
# (what the header says, the data after it, what the error must say)
LIES = {
    "header not JSON": (b"{not json", b"", r"header is not UTF-8 JSON"),
    "header not UTF-8": (b'{"\xff": 1}', b"", r"header is not UTF-8 JSON"),
    "header not an object": (b"[1, 2]", b"", r"must be a JSON object, got list"),
    "duplicate name": (b'{"a": 1, "a": 2}', b"", r"names 'a' twice"),
    "unknown dtype": ({"w": {**ENTRY, "dtype": "F8_E4M3"}}, bytes(8), r"tensor 'w': unknown dtype 'F8_E4M3'"),
    "shape too big for its bytes": ({"w": {**ENTRY, "shape": [3]}}, bytes(8),
                                    r"tensor 'w': shape \[3\] of F32 is 12 bytes, but data_offsets \[0, 8\] hold 8"),
    "dtype too big for its bytes": ({"w": {**ENTRY, "dtype": "F64"}}, bytes(8), r"tensor 'w': .* F64 is 16 bytes"),
    # the other way round: a range larger than its tensor would hand the reader bytes that belong to no one
    "bytes larger than shape × dtype": ({"w": {**ENTRY, "shape": [1]}}, bytes(8),
                                        r"tensor 'w': shape \[1\] of F32 is 4 bytes, but data_offsets \[0, 8\] hold 8"),
    "bytes larger than dtype": ({"w": {**ENTRY, "dtype": "F16"}}, bytes(8), r"tensor 'w': .* F16 is 4 bytes.* hold 8"),
    "offsets past the data": ({"w": {**ENTRY, "data_offsets": [4, 12]}}, bytes(8),
                              r"tensor 'w': data_offsets \[4, 12\] run past the end of the data \(8 bytes\)"),
    "overlapping buffers": ({"a": ENTRY, "b": {**ENTRY, "data_offsets": [4, 12]}}, bytes(12),
                            r"tensor 'b': data_offsets \[4, 12\] overlap those of 'a', which end at 8"),
    "a gap": ({"a": ENTRY, "b": {**ENTRY, "data_offsets": [12, 20]}}, bytes(20),
              r"tensor 'b': .* leave a gap of 4 bytes after 'a'"),
    "bytes after the last tensor": ({"a": ENTRY}, bytes(12), r"4 bytes belong to no tensor"),
    "negative offset": ({"w": {**ENTRY, "data_offsets": [-8, 0]}}, bytes(8), r"tensor 'w': data_offsets must be"),
    "reversed offsets": ({"w": {**ENTRY, "data_offsets": [8, 0]}}, bytes(8), r"tensor 'w': data_offsets must be"),
    "bool offsets": ({"w": {**ENTRY, "data_offsets": [False, 8]}}, bytes(8), r"tensor 'w': data_offsets must be"),
    "float shape": ({"w": {**ENTRY, "shape": [2.0]}}, bytes(8), r"tensor 'w': shape must be a list of ints"),
    "negative shape": ({"w": {**ENTRY, "shape": [-2]}}, bytes(8), r"tensor 'w': shape must be a list of ints"),
    "missing key": ({"w": {"dtype": "F32", "shape": [2]}}, bytes(8), r"tensor 'w': the entry must have exactly"),
    "extra key": ({"w": {**ENTRY, "x": 1}}, bytes(8), r"tensor 'w': the entry must have exactly"),
    "bad metadata": ({"__metadata__": {"a": 1}, "w": ENTRY}, bytes(8), r"'__metadata__' must map strings"),
    "a terabyte claimed": ({"w": {**ENTRY, "shape": [2 ** 38], "data_offsets": [0, 2 ** 40]}}, bytes(8),
                           r"tensor 'w': data_offsets \[0, 1099511627776\] run past the end"),
}


@pytest.mark.parametrize("case", LIES)
def test_a_lying_header_is_refused_by_name_before_any_data_is_read(case, tmp_path, monkeypatch):
    header, data, message = LIES[case]
    path = _craft(tmp_path / "lie.safetensors", header, data)
    header_end = 8 + struct.unpack("<Q", path.read_bytes()[:8])[0]
    reached = []
    monkeypatch.setattr(st, "open", lambda p, mode="r": _Recorder(builtins.open(p, mode), reached), raising=False)
    tracemalloc.start()
    try:
        with pytest.raises(SafetensorsError, match=message) as err:
            read_safetensors(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(path) in str(err.value)
    assert reached and max(reached) <= header_end          # the header and nothing after it
    assert peak < 1_000_000                                 # nothing the size of a claimed tensor


@pytest.mark.parametrize("length, size, message", [
    (None, 5, r"5 bytes, too short for the 8-byte header length"),
    (1000, None, r"the header claims 1000 bytes, but the file has only 2 after the length"),
    (3, None, r"the header claims 3 bytes, but the file has only 2 after the length"),      # one byte past the end
    (2 ** 63, None, r"the header claims 9223372036854775808 bytes"),
])
def test_a_header_longer_than_the_file_is_refused_without_reading_it(length, size, message, tmp_path):
    path = _craft(tmp_path / "short.safetensors", b"{}", length=length)
    if size is not None:
        path.write_bytes(path.read_bytes()[:size])
    with pytest.raises(SafetensorsError, match=message):
        read_safetensors(path)


def test_a_header_that_ends_exactly_at_the_end_of_the_file_is_read(tmp_path):
    assert read_safetensors(_craft(tmp_path / "empty.safetensors", b"{}", length=2)) == {}


def test_bool_bytes_other_than_0_and_1_are_refused(tmp_path):
    path = _craft(tmp_path / "b.safetensors", {"m": {"dtype": "BOOL", "shape": [2], "data_offsets": [0, 2]}},
                  bytes([1, 7]))
    with pytest.raises(SafetensorsError, match=r"tensor 'm': BOOL bytes must be 0 or 1, found 7"):
        read_safetensors(path)


def test_writing_is_atomic_and_refuses_what_it_cannot_name(tmp_path, monkeypatch):
    path = tmp_path / "t.safetensors"
    write_safetensors(path, {"a": np.ones(3, np.float32)})
    before = path.read_bytes()
    with pytest.raises(TypeError, match=r"tensors\['s'\]: dtype <U1 has no safetensors name"):
        write_safetensors(path, {"s": np.array(["x"])})
    with pytest.raises(ValueError, match=r"'__metadata__' cannot be a tensor name"):
        write_safetensors(path, {"__metadata__": np.ones(1)})

    def boom(*args):
        raise OSError("disk full")
    monkeypatch.setattr(st, "memoryview", boom, raising=False)     # dies while writing the data
    with pytest.raises(OSError, match="disk full"):
        write_safetensors(path, {"b": np.zeros(5)})
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["t.safetensors"]
