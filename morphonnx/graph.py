"""The loaded ONNX model: inferred shapes, lazy initializers, and a networkx view of its ops.

`load(model)` accepts a path or a ModelProto, never modifies its input, and turns every
problem with the input (missing file, not ONNX, truncated, missing external data, shape
that stays unknown) into a one-line `BadInput`.
"""
from __future__ import annotations

import ast
import re

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .errors import BadInput
from .validate import MAX_DIM, check_dim, topological_order, validate_model
from .weights import MAP_BYTES, map_external
from .fold import Folded, constant_value, constants_to_initializers, fold_constants

Dim = int | str | None  # a static size, a symbolic name, or unknown
Shape = tuple[Dim, ...]


@dataclass(frozen=True)
class TensorInfo:
    """Name, element type (onnx TensorProto enum) and shape (None when the rank is unknown)."""

    name: str
    elem_type: int
    shape: Shape | None

    @property
    def dtype(self) -> np.dtype | None:
        """The numpy dtype of the element type, None if it has none."""
        try:
            return helper.tensor_dtype_to_np_dtype(self.elem_type)
        except (KeyError, ValueError, TypeError):
            return None

    @property
    def is_static(self) -> bool:
        """True when every dimension is a known integer."""
        return self.shape is not None and all(isinstance(d, int) for d in self.shape)


class Graph:
    """An ONNX model with inferred shapes, as ops joined by tensors.

    `nodes` maps a unique node name to its NodeProto in file order; `nx` is a
    networkx.DiGraph over node names whose edges carry the tensors they pass (`tensors`).
    Initializer data is read only when asked for (`array`), external data included.
    """

    def __init__(self, model: onnx.ModelProto, base_dir: Path | None, path: Path | None = None,
                 stored: set[str] | None = None, weights: Mapping[str, TensorProto] | None = None):
        self.model = model
        # Constants stored in the file (initializers, Constant nodes), as opposed to folded ones:
        # only these can be parameters.
        self.stored = stored if stored is not None else _stored_constants(model)
        self.base_dir = base_dir
        self.path = path
        g = model.graph
        # `model` holds the small initializers; large ones (`weights`) live only here, with
        # typed graph inputs standing in for them in the model.
        self.initializers: dict[str, TensorProto] = {t.name: t for t in g.initializer}
        self.initializers.update(weights or {})
        self.constants: dict[str, TensorProto] = {}
        self.nodes: dict[str, onnx.NodeProto] = {}
        self.producer: dict[str, str] = {}
        self.consumers: dict[str, list[str]] = {}
        self._arrays: dict[str, np.ndarray] = {}
        self.origins: dict[str, str] = {}  # folded re-layout of a parameter → that parameter's name
        # graph inputs and outputs as the file declares them (symbolic batch and all), before load fixed them
        self.declared: dict[str, TensorInfo] = {}
        # folded constant computed from parameters → those parameters (counted in its place)
        self.derived: dict[str, tuple[str, ...]] = {}
        # tensors whose shapes came from a run in onnxruntime (onnx's inference left them unknown)
        self.measured: set[str] = set()
        self.dims: dict[str, int | None] = {}  # symbolic input dimensions: the value each got (None: none)
        self.scope_names: dict[str, str] = {}  # generated weight name → its module's (`val_28` → `...q_proj.weight`)
        for node in g.node:
            self.nodes[node.name] = node
            for t in node.output:
                if t:
                    self.producer[t] = node.name
            for t in node.input:
                if t:
                    self.consumers.setdefault(t, []).append(node.name)
            if node.op_type == "Constant" and len(node.output) == 1:
                value = _constant_tensor(node)
                if value is not None:
                    self.constants[node.output[0]] = value
        self.inputs = [i.name for i in g.input if i.name not in self.initializers]
        self.outputs = [o.name for o in g.output]
        self.tensors: dict[str, TensorInfo] = {}
        for vi in list(g.input) + list(g.value_info) + list(g.output):
            self.tensors[vi.name] = _tensor_info(vi)
        for name, t in list(self.initializers.items()) + list(self.constants.items()):
            self.tensors[name] = TensorInfo(name, t.data_type, tuple(int(d) for d in t.dims))
        self._nx = None
        self._order: list[str] | None = None
        self.source: onnx.ModelProto | None = None  # the ModelProto it was loaded from (not a file)
        self._kernel_map = None

    @property
    def nx(self) -> "nx.DiGraph":
        """The networkx view (built on first use: most commands need only `topological_nodes`)."""
        if self._nx is None:
            self._nx = self._build_nx()
        return self._nx

    def _build_nx(self) -> "nx.DiGraph":
        import networkx as nx
        graph = nx.DiGraph()
        graph.add_nodes_from((name, {"op_type": n.op_type}) for name, n in self.nodes.items())
        edges: dict[tuple[str, str], list[str]] = {}
        for tensor, users in self.consumers.items():
            src = self.producer.get(tensor)
            if src is None:
                continue
            for dst in users:
                edges.setdefault((src, dst), []).append(tensor)
        graph.add_edges_from((s, d, {"tensors": ts}) for (s, d), ts in edges.items())
        return graph

    # ---- tensors -------------------------------------------------------------------------
    def info(self, name: str) -> TensorInfo | None:
        """TensorInfo of a tensor, None if inference left it untyped."""
        return self.tensors.get(name)

    def display_name(self, name: str) -> str:
        """The name a person knows a weight by: its parameter's (a re-laid-out copy is its
        original), or its module's where the exporter generated a name (`val_28`)."""
        name = self.origins.get(name, name)
        return self.scope_names.get(name, name)

    def is_constant(self, name: str) -> bool:
        """True for an initializer or the output of a Constant node."""
        return name in self.initializers or name in self.constants

    def array(self, name: str) -> np.ndarray:
        """The value of an initializer or Constant output, loading external data on first use
        (a large external tensor is a read-only memory map of its file, mapped at each call)."""
        if name not in self._arrays:
            proto = self.initializers.get(name) or self.constants.get(name)
            if proto is None:
                raise KeyError(f"{name} is not a constant tensor")
            base = str(self.base_dir) if self.base_dir is not None else None
            if base and proto.data_location == TensorProto.EXTERNAL:
                mapped = map_external(proto, base)
                if mapped is not None and mapped.nbytes >= MAP_BYTES:
                    return mapped  # not kept: its pages leave memory with the last view of it
            self._arrays[name] = numpy_helper.to_array(proto, base) if base else numpy_helper.to_array(proto)
        return self._arrays[name]

    def static_shape(self, name: str, where: str) -> tuple[int, ...]:
        """The all-integer shape of a tensor, or BadInput naming the tensor and `where` it matters."""
        info = self.tensors.get(name)
        if info is None or info.shape is None:
            if self.inputs_static():
                raise BadInput(f"shape of tensor '{name}' ({where}) is unknown: neither shape inference nor "
                               f"a run in onnxruntime gives it")
            raise BadInput(f"shape of tensor '{name}' ({where}) is unknown after shape inference; "
                           f"give it with --input-shape INPUT=d0,d1,...")
        if not info.is_static:
            dims = ",".join(str(d if d is not None else "?") for d in info.shape)
            left = [k for k, v in self.dims.items() if v is None]
            hint = (f"--dim {left[0]}=N, " if left else "") + "--batch N or --input-shape INPUT=d0,d1,..."
            raise BadInput(f"shape of tensor '{name}' ({where}) is [{dims}], not static; "
                           f"fix the symbolic dimensions with {hint}" +
                           (f" (symbolic: {', '.join(left)})" if left else ""))
        return tuple(int(d) for d in info.shape)  # type: ignore[arg-type]

    def inputs_static(self) -> bool:
        """True when every graph input has an all-integer shape."""
        return all(self.tensors.get(i) is not None and self.tensors[i].is_static for i in self.inputs)

    def parameters_of(self, name: str) -> tuple[str, ...]:
        """The stored parameters a constant tensor counts as: a folded constant those it is
        computed from, a stored tensor itself."""
        return self.derived.get(name) or ((name,) if name in self.stored else ())

    def topological_nodes(self) -> list[str]:
        """Node names in a topological order (computed once; the graph does not change)."""
        if self._order is None:
            names = list(self.nodes)
            self._order = [names[i] for i in topological_order(list(self.nodes.values()))]
        return list(self._order)

    def external_files(self) -> list[Path]:
        """The external data files the model reads."""
        files = {e.value for t in self.initializers.values() if t.data_location == TensorProto.EXTERNAL
                 for e in t.external_data if e.key == "location"}
        return [self.base_dir / f for f in sorted(files)] if self.base_dir is not None else []

    @property
    def opset(self) -> int:
        """The default-domain opset version."""
        for o in self.model.opset_import:
            if o.domain in ("", "ai.onnx"):
                return int(o.version)
        return 0


def node_attr(node: onnx.NodeProto, name: str, default=None):
    """An attribute's value (strings decoded), or `default`."""
    for a in node.attribute:
        if a.name == name:
            v = helper.get_attribute_value(a)
            return v.decode() if isinstance(v, bytes) else v
    return default


def _stored_constants(model: onnx.ModelProto) -> set[str]:
    return {t.name for t in model.graph.initializer} | {
        o for n in model.graph.node if n.op_type == "Constant" for o in n.output}


def _constant_tensor(node: onnx.NodeProto) -> TensorProto | None:
    return constant_value(node)


def _tensor_info(vi: onnx.ValueInfoProto) -> TensorInfo:
    tt = vi.type.tensor_type
    if not tt.HasField("shape"):
        return TensorInfo(vi.name, tt.elem_type, None)
    dims: list[Dim] = []
    for d in tt.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            dims.append(d.dim_param)
        else:
            dims.append(None)
    return TensorInfo(vi.name, tt.elem_type, tuple(dims))


# ---- loading ---------------------------------------------------------------------------------

def read_model(source: str | os.PathLike | onnx.ModelProto, base_dir: str | os.PathLike | None = None
               ) -> tuple[onnx.ModelProto, Path | None, Path | None]:
    """Read a model without its external data; return (copy of the model, base dir, path).
    `base_dir`: where a ModelProto's external data lies (a file's lies beside it)."""
    if isinstance(source, onnx.ModelProto):
        model = onnx.ModelProto()
        model.CopyFrom(source)
        return model, Path(base_dir) if base_dir is not None else None, None
    path = Path(source)
    if not path.exists():
        raise BadInput(f"{path}: no such file")
    if not path.is_file():
        raise BadInput(f"{path}: not a file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf raises DecodeError and friends
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BadInput(f"{path}: not a valid ONNX model ({reason})") from e
    if not model.HasField("graph") or (model.ir_version == 0 and not model.graph.node):
        raise BadInput(f"{path}: not an ONNX model (no graph in the file)")
    return model, path.resolve().parent, path


def check_external_data(model: onnx.ModelProto, base_dir: Path | None, path: Path | None) -> None:
    """BadInput if an initializer's external data file is missing or too short."""
    where = path or "model"
    for t in model.graph.initializer:
        if t.data_location != TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in t.external_data}
        loc = info.get("location")
        if base_dir is None:
            raise BadInput(f"{where}: initializer '{t.name}' has external data '{loc}' but the model "
                           f"was given in memory; load it from its file")
        file = base_dir / (loc or "")
        if not loc or not file.is_file():
            raise BadInput(f"{where}: external data file '{file}' of initializer '{t.name}' is missing")
        need = int(info.get("offset", 0)) + int(info.get("length", 0))
        if need > file.stat().st_size:
            raise BadInput(f"{where}: external data file '{file}' is shorter than initializer "
                           f"'{t.name}' needs ({need} bytes)")


def parse_input_shape(spec: str) -> tuple[str, tuple[int, ...]]:
    """Parse `name=1,3,224,224` into ('name', (1, 3, 224, 224))."""
    name, sep, dims = spec.rpartition("=")
    try:
        if not sep or not name:
            raise ValueError
        shape = tuple(int(d) for d in dims.split(","))
        if not shape or min(shape) <= 0 or max(shape) > MAX_DIM:
            raise ValueError
    except ValueError:
        raise BadInput(f"--input-shape '{spec}': expected NAME=d0,d1,... with integers from 1 to {MAX_DIM}") from None
    return name, shape


def parse_dim(spec: str) -> tuple[str, int]:
    """Parse `sequence_length=128` into ('sequence_length', 128)."""
    name, sep, value = spec.partition("=")
    try:
        if not sep or not name.strip():
            raise ValueError
        size = int(value)
        if not 0 <= size <= MAX_DIM:
            raise ValueError
    except ValueError:
        raise BadInput(f"--dim '{spec}': expected NAME=VALUE with an integer from 0 to {MAX_DIM} "
                       f"(0: an empty cache)") from None
    return name.strip(), size


def symbolic_dims(model: onnx.ModelProto) -> list[str]:
    """The names of the symbolic dimensions of the graph inputs, in order of appearance."""
    init = {t.name for t in model.graph.initializer}
    found: dict[str, None] = {}
    for vi in model.graph.input:
        if vi.name not in init:
            for d in vi.type.tensor_type.shape.dim:
                if d.HasField("dim_param") and d.dim_param:
                    found.setdefault(d.dim_param)
    return list(found)


def _set_dims(model: onnx.ModelProto, dims: Mapping[str, int]) -> dict[str, int | None]:
    """Give every symbolic input dimension named in `dims` its value; return each symbolic
    dimension found with the value it got (None: still symbolic)."""
    found = symbolic_dims(model)
    unknown = sorted(set(dims) - set(found))
    if unknown:
        raise BadInput(f"--dim {unknown[0]}: the model's inputs have no symbolic dimension of that name "
                       f"(they have: {', '.join(found) or 'none'})")
    init = {t.name for t in model.graph.initializer}
    for vi in model.graph.input:
        if vi.name in init:
            continue
        for d in vi.type.tensor_type.shape.dim:
            if d.HasField("dim_param") and d.dim_param in dims:
                value = int(dims[d.dim_param])
                if value:  # 0: an empty dimension (a key/value cache before the first token)
                    check_dim(value, f"--dim {d.dim_param}")
                d.Clear()
                d.dim_value = value
    return {name: dims.get(name) for name in found}


def _set_input_shapes(model: onnx.ModelProto, batch: int | None, shapes: Mapping[str, Sequence[int]]) -> None:
    init = {t.name for t in model.graph.initializer}
    inputs = {i.name: i for i in model.graph.input if i.name not in init}
    unknown = sorted(set(shapes) - set(inputs))
    if unknown:
        raise BadInput(f"--input-shape names '{unknown[0]}', which is not a graph input "
                       f"(inputs: {', '.join(inputs) or 'none'})")
    for name, vi in inputs.items():
        tt = vi.type.tensor_type
        if name in shapes:
            dims = [_given_dim(d, f"--input-shape {name}") for d in shapes[name]]
            if tt.HasField("shape") and len(tt.shape.dim) and len(tt.shape.dim) != len(dims):
                raise BadInput(f"--input-shape {name}: rank {len(dims)} but the model's input has "
                               f"rank {len(tt.shape.dim)}")
            tt.ClearField("shape")
            for d in dims:
                tt.shape.dim.add().dim_value = int(d)
        elif tt.HasField("shape") and len(tt.shape.dim):
            first = tt.shape.dim[0]
            if batch is not None and first.HasField("dim_value") and first.dim_value != batch:
                raise BadInput(f"--batch {batch}: input '{name}' has a fixed batch of {first.dim_value}; "
                               f"re-export with a dynamic batch, or give --input-shape {name}=...")
            if batch is not None or not first.HasField("dim_value"):
                first.Clear()
                first.dim_value = int(batch if batch is not None else 1)


def _given_dim(d: object, what: str) -> int:
    """A dimension the API was given (input_shapes): an integer from 1 to MAX_DIM."""
    if isinstance(d, bool) or not isinstance(d, (int, np.integer)):
        raise BadInput(f"{what}: {d!r} is not an integer size")
    return check_dim(int(d), what)


def _clear_inferred(model: onnx.ModelProto) -> None:
    # Stale symbolic value_info from the exporter would fight the concrete shapes we infer;
    # only what onnx cannot infer (outputs of custom-domain ops) is kept.
    custom = {o for n in model.graph.node if n.domain not in ("", "ai.onnx") for o in n.output}
    keep = [vi for vi in model.graph.value_info if vi.name in custom]
    del model.graph.value_info[:]
    model.graph.value_info.extend(keep)
    for o in model.graph.output:
        tt = o.type.tensor_type
        if tt.HasField("shape") and any(not d.HasField("dim_value") for d in tt.shape.dim):
            tt.ClearField("shape")


def _unique_node_names(model: onnx.ModelProto) -> None:
    seen: set[str] = set()
    for i, node in enumerate(model.graph.node):
        name = node.name or f"{node.op_type}_{i}"
        while name in seen:
            name = f"{name}_{i}"
        node.name = name
        seen.add(name)


def _detach_weights(model: onnx.ModelProto, base_dir: Path | None) -> dict[str, TensorProto]:
    """Take large initializers out of the model, leaving typed graph inputs in their place.

    Shape inference serializes the whole model; without the weights it is fast whatever
    their size. Small ones stay, since data propagation reads shape constants.
    """
    g = model.graph
    saved = list(g.initializer)
    big = {t.name: t for t in saved if t.data_type != TensorProto.INT64 and _numel(t) > 64}
    small = [t for t in saved if t.name not in big]
    if not big and all(t.data_location != TensorProto.EXTERNAL for t in small):
        return {}
    g.ClearField("initializer")
    # Small tensors kept in the model carry their data, so that the model runs from bytes.
    g.initializer.extend(t if t.data_location != TensorProto.EXTERNAL
                         else numpy_helper.from_array(numpy_helper.to_array(t, str(base_dir)), t.name) for t in small)
    listed = {i.name for i in g.input}
    g.input.extend(helper.make_tensor_value_info(n, t.data_type, list(t.dims)) for n, t in big.items()
                   if n not in listed)
    return big


def _numel(t: TensorProto) -> int:
    n = 1
    for d in t.dims:
        n *= d
    return n


def infer_shapes(model: onnx.ModelProto, where: object) -> onnx.ModelProto:
    """onnx shape inference with data propagation (resolves Shape→Gather→Reshape chains).
    Value_info of tensors that became constants (folded since the last inference) goes first:
    a stale symbolic shape there would win over the constant's own."""
    const = {t.name for t in model.graph.initializer} | {i.name for i in model.graph.input}
    if any(vi.name in const for vi in model.graph.value_info):
        keep = [vi for vi in model.graph.value_info if vi.name not in const]
        del model.graph.value_info[:]
        model.graph.value_info.extend(keep)
    try:
        return onnx.shape_inference.infer_shapes(model, check_type=False, strict_mode=False, data_prop=True)
    except Exception as e:
        raise BadInput(f"{where}: shape inference failed ({str(e).strip().splitlines()[0]})") from e


def load(source: str | os.PathLike | onnx.ModelProto, *, batch: int | None = None,
         input_shapes: Mapping[str, Sequence[int]] | None = None, dims: Mapping[str, int] | None = None,
         base_dir: str | os.PathLike | None = None) -> Graph:
    """Load an ONNX model into a Graph.

    Named symbolic dimensions of the graph inputs take their value from `dims`
    (`{"sequence_length": 128}`, every input at once); symbolic leading (batch) dimensions left
    become `batch` (default 1); `input_shapes` fixes whole inputs; other symbolic dimensions
    stay symbolic. `graph.dims` records every symbolic dimension found and the value it got.
    Local functions are inlined; external data is checked but read only when an initializer's
    value is needed (a ModelProto's from `base_dir`).
    """
    if batch is not None:
        check_dim(batch, "--batch")
    model, base_dir, path = read_model(source, base_dir)
    where = path or "model"
    validate_model(model, base_dir, where)
    check_external_data(model, base_dir, path)
    if model.functions:
        from onnx import inliner
        model = inliner.inline_local_functions(model)
    _unique_node_names(model)
    declared = {vi.name: _tensor_info(vi) for vi in list(model.graph.input) + list(model.graph.output)}
    found = _set_dims(model, dims or {})
    leading = {d.dim_param for vi in model.graph.input if vi.name not in {t.name for t in model.graph.initializer}
               for d in vi.type.tensor_type.shape.dim[:1] if d.HasField("dim_param") and d.dim_param}
    _set_input_shapes(model, batch, input_shapes or {})
    left = {d.dim_param for vi in model.graph.input for d in vi.type.tensor_type.shape.dim if d.dim_param}
    found.update({name: batch or 1 for name in leading if found.get(name) is None and name not in left})
    _clear_inferred(model)
    stored = _stored_constants(model)
    from_nodes = {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    constants_to_initializers(model)  # ops read their constants directly
    weights = _detach_weights(model, base_dir)
    base = str(base_dir) if base_dir else None
    done = Folded()
    model = infer_shapes(model, where)
    measured: set[str] = set()
    for attempt in range(2):
        for _ in range(8):  # folding can make more shapes static, which lets more fold
            f = fold_constants(model, weights, base, done.values, done.derived)
            done.update(f)
            if not f.folded:
                break
            model = infer_shapes(model, where)
        if attempt or not _measure_shapes(model, weights, done.values, base, measured):
            break
        model = infer_shapes(model, where)  # shapes propagate from the measured ones
    origins = done.origins
    for new, old in origins.items():  # a re-laid-out parameter is still that parameter
        while old in origins:
            old = origins[old]
        origins[new] = old
    stored |= set(origins) | done.twins
    for name, value in done.values.items():
        stub = TensorProto(name=name, data_type=helper.np_dtype_to_tensor_dtype(value.dtype))
        stub.dims.extend(value.shape)
        weights[name] = stub  # typed, without data: the value is in the array cache
    graph = Graph(model, base_dir, path, stored, weights)
    graph.source = source if isinstance(source, onnx.ModelProto) else None  # the runtime's kernels read it
    graph.origins = origins
    # A Constant node computed into a weight with a stored initializer (the ones of a weight
    # standardization) is a helper constant, not a parameter.
    graph.derived = {k: tuple(p for p in v if p not in from_nodes or all(q in from_nodes for q in v))
                     for k, v in done.derived.items() if v}
    graph.measured = measured & set(graph.tensors)
    graph.declared = declared
    graph.dims = found
    graph.scope_names = _scope_names(model, graph.origins)
    graph._arrays.update(done.values)
    return graph


GENERATED = re.compile(r"^(val_\d+|onnx::\w+_\d+|_v_\d+|const_\w+)$")
WEIGHTED = {"Conv": 1, "ConvTranspose": 1, "Gemm": 1, "MatMul": 1}


def torchscript_scope(node_name: str) -> str:
    """The module path of a TorchScript node name: `/features/features.1/conv/conv.0/Conv` →
    `features.1.conv.0` (a child of a Sequential or ModuleList is scoped as `parent.index`)."""
    qual, last = "", ""
    for c in node_name.strip("/").split("/")[:-1]:
        if last and c.startswith(last + "."):
            qual = qual[:len(qual) - len(last)] + c
        else:
            qual = f"{qual}.{c}" if qual else c
        last = c
    return qual


def _scope_names(model: onnx.ModelProto, origins: Mapping[str, str]) -> dict[str, str]:
    """Weights with a generated name (`val_28`, `onnx::MatMul_123`) read by a Conv/Gemm/MatMul
    whose node carries the torch exporter's module scope (`pkg.torch.onnx.name_scopes`, or a
    TorchScript node name `/model/layers.0/self_attn/q_proj/MatMul`): `{module}.weight`."""
    out: dict[str, str] = {}
    for node in model.graph.node:
        i = WEIGHTED.get(node.op_type)
        if i is None or len(node.input) <= i:
            continue
        weight = origins.get(node.input[i], node.input[i])
        if weight in out or not (GENERATED.match(weight) or ("." not in weight and "/" not in weight)):
            continue  # a parameter's own name (`conv1.weight`, `model/dense/kernel`) stays
        scope = next((p.value for p in node.metadata_props if p.key == "pkg.torch.onnx.name_scopes"), None)
        module = None
        if scope:
            try:
                parts = [x for x in ast.literal_eval(scope) if x]
            except (ValueError, SyntaxError):
                parts = []
            module = parts[-2] if len(parts) >= 2 else None
        elif node.name.startswith("/") and node.name.count("/") >= 2:
            module = torchscript_scope(node.name)
        if module:
            out[weight] = f"{module}.weight"
    return out


def _measure_shapes(model: onnx.ModelProto, weights: Mapping[str, TensorProto], values: Mapping[str, np.ndarray],
                    base_dir: str | None, measured: set[str]) -> bool:
    """Shapes that onnx's inference leaves unknown while every graph input is static: run the
    model once in onnxruntime with just those tensors as extra outputs, and record their
    shapes as value_info (in place). False when there is nothing to do or the run fails."""
    g = model.graph
    vis = {vi.name: vi for vi in list(g.value_info) + list(g.input) + list(g.output)}
    stored = {t.name for t in g.initializer}
    inputs = [i for i in g.input if i.name not in weights and i.name not in values and i.name not in stored]
    if not all(_tensor_info(i).is_static for i in inputs):
        return False
    unknown = []
    for n in g.node:
        for o in n.output:
            vi = vis.get(o)
            if not o or (vi is not None and vi.type.WhichOneof("value") not in (None, "tensor_type")):
                continue
            if vi is None or not _tensor_info(vi).is_static:
                unknown.append(o)
    if not unknown:
        return False
    try:
        import onnxruntime as ort
        m = _ancestors(model, unknown)  # only what computes them: a decoder's mask, not its weights
        outs = {o.name for o in m.graph.output}
        m.graph.output.extend(helper.make_empty_tensor_value_info(t) for t in unknown if t not in outs)
        rng = np.random.default_rng(0)
        feeds = {}
        for i in inputs:
            info = _tensor_info(i)
            dtype = info.dtype or np.float32
            feeds[i.name] = (rng.standard_normal(info.shape).astype(dtype) if np.issubdtype(dtype, np.floating)
                             else np.zeros(info.shape, dtype=dtype))
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        opts.log_severity_level = 4
        sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        wanted_out = set(unknown)
        names = [o.name for o in sess.get_outputs() if o.name in wanted_out]
        for name in (i.name for i in sess.get_inputs() if i.name not in feeds):  # weights, read when wanted
            if name in values:
                feeds[name] = np.ascontiguousarray(values[name])
            elif name in weights:
                feeds[name] = numpy_helper.to_array(weights[name], base_dir or "")
        wanted = {i.name for i in sess.get_inputs()}
        results = sess.run(names, {k: v for k, v in feeds.items() if k in wanted})
    except Exception:
        return False
    slots = {vi.name: vi for vi in list(g.value_info) + list(g.output)}
    for name, value in zip(names, results):
        if not isinstance(value, np.ndarray):
            continue
        vi = helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(value.dtype), list(value.shape))
        if name in slots:
            slots[name].CopyFrom(vi)
        else:
            g.value_info.append(vi)
        measured.add(name)
    return bool(names)


def ancestor_nodes(nodes: Sequence[onnx.NodeProto], tensors: Iterable[str], stop: Iterable[str] = ()) -> list[int]:
    """Indices (in order) of the nodes that `tensors` depend on, walking back from them and
    not past the tensors in `stop`."""
    producer = {o: k for k, n in enumerate(nodes) for o in n.output if o}
    stop = set(stop)
    need: set[int] = set()
    stack, seen = list(tensors), set()
    while stack:
        t = stack.pop()
        if t in seen or t in stop or t not in producer:
            continue
        seen.add(t)
        k = producer[t]
        if k not in need:
            need.add(k)
            stack.extend(i for i in nodes[k].input if i)
    return sorted(need)


def _ancestors(model: onnx.ModelProto, tensors: Sequence[str]) -> onnx.ModelProto:
    """A copy of the model with only the nodes that `tensors` depend on (the whole model when a
    node holds a subgraph, whose outer names the walk would not see)."""
    g = model.graph
    if any(a.HasField("g") or a.graphs for n in g.node for a in n.attribute):
        m = onnx.ModelProto()
        m.CopyFrom(model)
        return m
    need = ancestor_nodes(g.node, tensors)
    m = onnx.ModelProto()
    m.CopyFrom(model)
    del m.graph.node[:]
    m.graph.node.extend(g.node[k] for k in need)
    used = {i for k in need for i in g.node[k].input}
    keep = [t for t in m.graph.initializer if t.name in used]
    del m.graph.initializer[:]
    m.graph.initializer.extend(keep)
    del m.graph.output[:]
    return m


def iter_constant_inputs(graph: Graph, node: onnx.NodeProto) -> Iterable[tuple[int, str]]:
    """(index, name) of the node's inputs that are initializers or Constant outputs."""
    for i, t in enumerate(node.input):
        if t and graph.is_constant(t):
            yield i, t
