"""Reads ONNX Runtime's adapter files (`.onnx_adapter`, written by onnxruntime.AdapterFormat) with the standard
library and numpy only: the way the engine reads them (ONNX Runtime's C API loads an adapter but cannot list its
parameters, and its active-adapter mechanism does not apply to runs with IoBinding).

The file is a FlatBuffer (onnxruntime/lora/adapter_format/adapter_schema.fbs, file identifier "TORT"):

    table Parameter { name:string; dims:[int64]; data_type:TensorDataType (int32); raw_data:[uint8]; }
    table Adapter { format_version:int; adapter_version:int; model_version:int; parameters:[Parameter]; }
    root_type Adapter;

FlatBuffers in brief (all little-endian): the file starts with a uint32 offset to the root table, then the
4-byte identifier. A table starts with an int32 `soffset`; its vtable is at `table - soffset`: uint16 vtable
size, uint16 table size, then one uint16 per field (the field's offset from the table start, 0 = absent). A
string / vector field holds a uint32 offset, relative to the field's own position, to a uint32 length followed
by the elements; a vector of tables holds one such uint32 offset per element. raw_data is the tensor in C order,
little-endian. Every offset is bounds-checked: a damaged file raises AdapterError, never reads outside the file.
"""

from __future__ import annotations

import struct
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# TensorDataType (the ONNX TensorProto numbering) -> numpy.
DTYPES = {1: np.float32, 2: np.uint8, 3: np.int8, 4: np.uint16, 5: np.int16, 6: np.int32, 7: np.int64, 9: np.bool_,
          10: np.float16, 11: np.float64, 12: np.uint32, 13: np.uint64}
DTYPE_NAMES = {1: "float32", 10: "float16", 16: "bfloat16", 11: "float64"}
FORMAT_VERSION = 1
MAX_DIMS = 8


class AdapterError(Exception):
    pass


@dataclass
class Adapter:
    format_version: int
    adapter_version: int
    model_version: int
    parameters: dict[str, np.ndarray]  # in file order
    data_types: dict[str, int]  # TensorDataType of each parameter


class _Buf:
    def __init__(self, data: bytes, where: str):
        self.b = data
        self.where = where

    def _need(self, pos: int, n: int, what: str):
        if pos < 0 or n < 0 or pos + n > len(self.b):
            raise AdapterError(f"{self.where}: {what} at byte {pos} (+{n}) lies outside the file "
                               f"({len(self.b)} bytes): not an ONNX Runtime adapter file, or damaged")

    def u16(self, pos, what):
        self._need(pos, 2, what)
        return struct.unpack_from("<H", self.b, pos)[0]

    def u32(self, pos, what):
        self._need(pos, 4, what)
        return struct.unpack_from("<I", self.b, pos)[0]

    def i32(self, pos, what):
        self._need(pos, 4, what)
        return struct.unpack_from("<i", self.b, pos)[0]

    def field(self, table: int, index: int, what: str) -> int | None:
        """The absolute position of field `index` of the table at `table`, or None when absent."""
        vtable = table - self.i32(table, f"{what} table")
        vsize = self.u16(vtable, f"{what} vtable")
        if vsize < 4 or vsize % 2:
            raise AdapterError(f"{self.where}: {what} vtable size {vsize} is invalid")
        slot = 4 + 2 * index
        if slot + 2 > vsize:
            return None
        off = self.u16(vtable + slot, f"{what} vtable")
        return table + off if off else None

    def deref(self, pos: int, what: str) -> int:
        return pos + self.u32(pos, what)

    def vector(self, pos: int, elem: int, what: str) -> tuple[int, int]:
        """(start, count) of the vector the uoffset at `pos` points to; elements of `elem` bytes."""
        start = self.deref(pos, what)
        n = self.u32(start, f"{what} length")
        self._need(start + 4, n * elem, what)
        return start + 4, n


def read_bytes(data: bytes, where: str = "adapter") -> Adapter:
    b = _Buf(data, where)
    if len(data) < 8 or data[4:8] != b"TORT":
        raise AdapterError(f"{where}: not an ONNX Runtime adapter file (no 'TORT' identifier at byte 4)")
    root = b.u32(0, "root offset")

    def int_field(index, name):
        pos = b.field(root, index, "Adapter")
        return 0 if pos is None else b.i32(pos, name)

    fmt = int_field(0, "format_version")
    if fmt != FORMAT_VERSION:
        raise AdapterError(f"{where}: adapter format version {fmt}, this reader knows {FORMAT_VERSION}")
    params: dict[str, np.ndarray] = {}
    types: dict[str, int] = {}
    ppos = b.field(root, 3, "Adapter")
    if ppos is not None:
        start, count = b.vector(ppos, 4, "parameters")
        for i in range(count):
            t = b.deref(start + 4 * i, f"parameter {i}")
            npos = b.field(t, 0, f"parameter {i}")
            if npos is None:
                raise AdapterError(f"{where}: parameter {i} has no name")
            s0, n = b.vector(npos, 1, f"parameter {i} name")
            try:
                name = data[s0:s0 + n].decode("utf-8")
            except UnicodeDecodeError:
                raise AdapterError(f"{where}: parameter {i}: name is not UTF-8")
            dpos = b.field(t, 1, name)
            dims: list[int] = []
            if dpos is not None:
                d0, nd = b.vector(dpos, 8, f"{name} dims")
                if nd > MAX_DIMS:
                    raise AdapterError(f"{where}: {name}: {nd} dimensions")
                dims = list(struct.unpack_from(f"<{nd}q", data, d0))
            if any(d < 0 for d in dims):
                raise AdapterError(f"{where}: {name}: negative dimension in {dims}")
            tpos = b.field(t, 2, name)
            dt = 0 if tpos is None else b.i32(tpos, f"{name} data_type")
            if dt not in DTYPES:
                raise AdapterError(f"{where}: {name}: data type {dt} is not supported")
            rpos = b.field(t, 3, name)
            r0, nr = b.vector(rpos, 1, f"{name} raw_data") if rpos is not None else (0, 0)
            itemsize = np.dtype(DTYPES[dt]).itemsize
            count_el = int(np.prod(dims, dtype=np.int64)) if dims else 1
            if nr != count_el * itemsize:
                raise AdapterError(f"{where}: {name}: {nr} bytes of data for shape {dims} of "
                                   f"{np.dtype(DTYPES[dt]).name} ({count_el * itemsize} expected)")
            if name in params:
                raise AdapterError(f"{where}: parameter {name} appears twice")
            arr = np.frombuffer(data, dtype=np.dtype(DTYPES[dt]).newbyteorder("<"), count=count_el, offset=r0)
            params[name] = arr.reshape(dims).astype(DTYPES[dt])
            types[name] = dt
    return Adapter(fmt, int_field(1, "adapter_version"), int_field(2, "model_version"), params, types)


def read(path: Path | str) -> Adapter:
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise AdapterError(f"{path}: cannot read ({e.strerror})")
    return read_bytes(data, str(path))


def main(argv=None) -> int:
    """python onnx_adapter.py FILE...: list each file's parameters."""
    for p in (argv if argv is not None else sys.argv[1:]):
        try:
            a = read(p)
        except AdapterError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"{p}: format {a.format_version}, adapter version {a.adapter_version}, model version "
              f"{a.model_version}, {len(a.parameters)} parameters")
        for k, v in a.parameters.items():
            print(f"  {k} {v.dtype} {list(v.shape)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
