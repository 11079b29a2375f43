"""The key/value header of a GGUF file, read without its tensors (torch-free, fast).

gguf's `GGUFReader` parses every field and tensor info up front: 5.6-7.3 s on SmolLM2-135M's GGUF here
(49,152 tokens and 48,900 merges, each a separate field part). `read_gguf_metadata` walks the header
once, returns scalars and short arrays, and skips long arrays (a tokenizer's tokens, merges).
Layout (GGUF v2/v3): magic, uint32 version, uint64 tensor count, uint64 kv count, then per kv a
string key (uint64 length + UTF-8 bytes), a uint32 value type (gguf.GGUFValueType) and the value.
"""

from __future__ import annotations

import math
import mmap
import struct
from pathlib import Path
from typing import Any, NamedTuple


class GGUFArray(NamedTuple):
    """A long GGUF array value, skipped: its element type and length only."""

    type: int
    length: int


_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}  # GGUFValueType
_STRING, _ARRAY = 8, 9
SHORT_ARRAY = 64  # arrays up to this length are returned as lists, longer ones as GGUFArray
MAX_NESTING = 8  # arrays of arrays deeper than this are refused (each level is 12 bytes of the file, one Python call)
# the file's tensor names, beside the keys (not a GGUF key: those are dotted identifiers): transformers derives some
# config values from which tensors a file holds (StableLM's use_parallel_residual)
TENSORS = "<tensor names>"


_MEMO: dict[tuple[str, int, int], dict[str, Any]] = {}  # data.file_state -> header


def cached_metadata(path: Path) -> dict[str, Any]:
    """`read_gguf_metadata`, once per process while the file's size and mtime stay: `validate` inspects a
    source for every quantize entry that targets it (0.05 s per read of SmolLM2's header)."""
    from ptq_bench.data import file_state

    key = file_state(path)
    if key not in _MEMO:
        _MEMO[key] = read_gguf_metadata(path)
    return _MEMO[key]


def read_gguf_metadata(path: Path) -> dict[str, Any]:
    """{key: value} of a GGUF file's header (v2/v3, either byte order); long arrays as GGUFArray; the tensor
    names under `TENSORS`."""
    from gguf.constants import GGUF_MAGIC

    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        if len(mm) < 24 or struct.unpack_from("<I", mm, 0)[0] != GGUF_MAGIC:
            raise ValueError("not a GGUF file (bad magic)")
        e = "<" if struct.unpack_from("<I", mm, 4)[0] & 0xFFFF else ">"
        version = struct.unpack_from(e + "I", mm, 4)[0]
        if version < 2:
            raise ValueError(f"GGUF version {version} is not supported (2 or 3)")
        n_tensors, n_kv = struct.unpack_from(e + "QQ", mm, 8)
        off, out = 24, {}
        try:
            for _ in range(n_kv):
                name, off = _gguf_string(mm, off, e)
                vtype = struct.unpack_from(e + "I", mm, off)[0]
                out[name], off = _gguf_value(mm, off + 4, vtype, e)
            out[TENSORS] = _tensor_names(mm, off, n_tensors, e, int(out.get("general.alignment", 32)))
        except struct.error:
            raise ValueError(f"cut short inside its header ({len(mm)} bytes)") from None
    return out


def _tensor_names(mm: mmap.mmap, off: int, n: int, e: str, alignment: int) -> tuple[str, ...]:
    """The names in the tensor infos after the key/values: name, uint32 n_dims, n_dims uint64, uint32 type,
    uint64 offset each. A file cut short (its last tensors' bytes missing) is a ValueError naming the first
    tensor past its end: transformers' loader found it as a reshape error after the run folder was written."""
    from gguf.constants import GGML_QUANT_SIZES

    names, ends = [], []
    for _ in range(n):
        name, off = _gguf_string(mm, off, e)
        n_dims = struct.unpack_from(e + "I", mm, off)[0]
        dims = struct.unpack_from(f"{e}{n_dims}Q", mm, off + 4)  # a count, not n_dims letters: n_dims is the file's
        ggml_type, start = struct.unpack_from(e + "IQ", mm, off + 4 + 8 * n_dims)
        off += 4 + 8 * n_dims + 4 + 8
        block, size = GGML_QUANT_SIZES.get(ggml_type, (1, 0))  # an unknown type: left to the loader
        names.append(name)
        ends.append(start + math.prod(dims) // block * size)
    data = off + (-off % alignment)
    for name, end in zip(names, ends):
        if data + end > len(mm):
            raise ValueError(f"cut short: tensor {name} ends at byte {data + end}, the file has {len(mm)}")
    return tuple(names)


def _gguf_string(mm: mmap.mmap, off: int, e: str) -> tuple[str, int]:
    n = struct.unpack_from(e + "Q", mm, off)[0]
    return mm[off + 8: off + 8 + n].decode("utf-8", errors="replace"), off + 8 + n


def _gguf_value(mm: mmap.mmap, off: int, vtype: int, e: str, depth: int = 0) -> tuple[Any, int]:
    if vtype in _SCALARS:
        fmt = e + _SCALARS[vtype]
        return struct.unpack_from(fmt, mm, off)[0], off + struct.calcsize(fmt)
    if vtype == _STRING:
        return _gguf_string(mm, off, e)
    if vtype != _ARRAY:
        raise ValueError(f"unknown GGUF value type {vtype} at byte {off}")
    if depth >= MAX_NESTING:
        raise ValueError(f"arrays nested more than {MAX_NESTING} deep at byte {off}")
    itype, n = struct.unpack_from(e + "IQ", mm, off)
    off += 12
    if itype in _SCALARS and n > SHORT_ARRAY:  # fixed-size elements: jump over them
        return GGUFArray(itype, n), off + n * struct.calcsize(e + _SCALARS[itype])
    items = []
    for _ in range(n):
        item, off = _gguf_value(mm, off, itype, e, depth + 1)
        if n <= SHORT_ARRAY:
            items.append(item)
    return (items if n <= SHORT_ARRAY else GGUFArray(itype, n)), off
