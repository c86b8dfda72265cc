"""Weights of models over memory: read external data through memory maps, compute rewritten
weights only when they are written, and copy external data tensor by tensor.

A pruned or grown model of a file with external data never holds its weights in memory: each
changed weight is a `Deferred` (the file's tensor, mapped, with the rewrite's steps to apply),
computed and written to a data file one at a time (`stream_constants`); the model then refers
to that file. Peak memory is one source tensor and its result.
"""
from __future__ import annotations

import math
import os
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
import onnx_graphsurgeon as gs
from onnx import TensorProto, helper

MAP_BYTES = 1 << 20   # external tensors at least this large are memory-mapped, not read
ALIGN = 64            # offsets of tensors in an external data file
INLINE_BYTES = 1024   # tensors smaller than this stay inside the model file
DATA_NAME = "weights.data"
STREAM_BYTES = 1 << 30  # the API streams a rewrite by default from this much external data on


def external_bytes(graph) -> int:
    """Bytes of a loaded graph's initializers stored as external data."""
    return sum(math.prod(t.dims) * helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
               for t in graph.initializers.values() if t.data_location == TensorProto.EXTERNAL)


def external_info(t: TensorProto) -> dict[str, str]:
    """The external_data entries of a tensor (location, offset, length)."""
    return {e.key: e.value for e in t.external_data}


def map_external(t: TensorProto, base_dir: Path | str) -> np.ndarray | None:
    """A read-only memory map of an external tensor's data (None for types numpy cannot map)."""
    if t.data_location != TensorProto.EXTERNAL:
        return None
    try:
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type))
    except (KeyError, TypeError, ValueError):
        return None
    if dtype.kind not in "fiub" or dtype.byteorder == ">" or t.data_type == TensorProto.BFLOAT16:
        return None
    info = external_info(t)
    shape = tuple(int(d) for d in t.dims)
    if math.prod(shape) == 0:
        return None
    mm = np.memmap(os.path.join(base_dir, info["location"]), dtype=dtype, mode="r",
                   offset=int(info.get("offset", 0)), shape=shape)
    return np.asarray(mm)  # an ndarray view: the map goes when the last view does


class Deferred(gs.ir.tensor.LazyValues):
    """A weight computed when it is written: `source()` with `steps` applied in turn.
    `shape` and `dtype` are known without computing it."""

    def __init__(self, name: str, source: Callable[[], np.ndarray], shape, dtype, steps=()):
        self.name = name
        self.source = source
        self.shape = tuple(int(d) for d in shape)
        self.dtype = np.dtype(dtype)
        self.nbytes = math.prod(self.shape) * self.dtype.itemsize
        self.steps = tuple(steps)
        self.tensor = None  # gs's exporter reads it: set by `stream_constants`

    def then(self, step: Callable[[np.ndarray], np.ndarray], shape) -> "Deferred":
        """This weight with one more step (whose result has `shape`)."""
        return Deferred(self.name, self.source, shape, self.dtype, self.steps + (step,))

    def rng(self) -> np.random.Generator:
        """A generator of its own (new channels of a grown weight), whatever the order of writing."""
        return np.random.default_rng(zlib.crc32(self.name.encode()))

    def load(self) -> np.ndarray:
        value = self.source()
        for step in self.steps:
            value = step(value)
        return np.ascontiguousarray(value, dtype=self.dtype)

    def __str__(self):
        return f"Deferred({self.name}, shape={self.shape}, dtype={self.dtype})"


def _stub(name: str, data_type: int, dims, location: str, offset: int, length: int) -> TensorProto:
    t = TensorProto(name=name, data_type=data_type, dims=list(dims))
    t.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", str(offset)), ("length", str(length))):
        e = t.external_data.add()
        e.key, e.value = k, v
    return t


def _append(fh, raw) -> int:
    """Write `raw` at the next aligned offset of `fh`; return that offset."""
    fh.write(b"\0" * (-fh.tell() % ALIGN))
    offset = fh.tell()
    fh.write(raw)
    return offset


def goes_external(nbytes: int, data_type: int) -> bool:
    """Large float/quantized weights go to the data file; shape and index data (int32/int64)
    stay inline since runtimes read it while building the graph, before external data."""
    return nbytes >= INLINE_BYTES and data_type not in (TensorProto.INT64, TensorProto.INT32)


def stream_constants(graph: gs.Graph, folder: Path) -> None:
    """Write every large constant of `graph` (Deferred ones computed one at a time) to
    `folder/weights.data`; each becomes a reference to its place there."""
    with open(folder / DATA_NAME, "ab") as fh:
        for t in graph.tensors().values():
            if not isinstance(t, gs.Constant):
                continue
            v = t._values
            if isinstance(v, gs.ir.tensor.LazyValues) and not isinstance(v, Deferred):
                if v.tensor.data_location == TensorProto.EXTERNAL and external_info(v.tensor).get("location") == DATA_NAME:
                    continue  # written already
                v = v.load()
            data_type = helper.np_dtype_to_tensor_dtype(np.dtype(v.dtype))
            if not goes_external(v.nbytes, data_type):
                if isinstance(v, Deferred):
                    t.values = v.load()
                continue
            value = v.load() if isinstance(v, Deferred) else np.ascontiguousarray(v)
            raw = memoryview(value).cast("B")
            offset = _append(fh, raw)
            lazy = gs.ir.tensor.LazyValues(_stub(t.name, data_type, value.shape, DATA_NAME, offset, value.nbytes))
            del value, raw
            t.values = lazy


def copy_external(t: TensorProto, base_dir: Path, fh, location: str) -> None:
    """Copy an external tensor's data from `base_dir` to the end of `fh` in chunks, and point
    `t` at its new place (`location`)."""
    info = external_info(t)
    src = os.path.join(base_dir, info["location"])
    start = int(info.get("offset", 0))
    length = int(info["length"]) if "length" in info else os.path.getsize(src) - start
    fh.write(b"\0" * (-fh.tell() % ALIGN))
    offset = fh.tell()
    with open(src, "rb") as inp:
        inp.seek(start)
        left = length
        while left:
            chunk = inp.read(min(left, 1 << 24))
            if not chunk:
                raise ValueError(f"external data of '{t.name}' is truncated")
            fh.write(chunk)
            left -= len(chunk)
    t.CopyFrom(_stub(t.name, t.data_type, t.dims, location, offset, length))
