"""The equivalence check of a rewrite: the pruned model against the oracle of its masks.

The pruned model is checked as the user receives it: given a path, onnx's full checker reads
that file and onnxruntime (all graph optimizations on) opens it in a fresh session. Every graph
output is compared, per output, on inputs of several seeds and scales. A comparison of outputs
that are ~0 or that do not vary with the input proves nothing, so then intermediate tensors
(the outputs of the layers, restricted to their kept channels) are compared too.
"""
from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass, field

import numpy as np
import onnx

from .graph import Graph
from .oracle import Oracle, random_inputs, session, with_outputs

TINY = 1e-6          # outputs below this are ~0: comparing them proves nothing
INTERMEDIATES = 32   # at most this many intermediate tensors are compared


@dataclass
class Check:
    """Result of the equivalence check: the worst error relative to its tensor's max |value|."""

    ok: bool
    max_abs_error: float
    max_abs_output: float
    tolerance: float = 1e-4
    checker: str = "passed"
    file: str | None = None                          # the file checked, None for an in-memory model
    compared: list[str] = field(default_factory=list)  # tensors compared besides the graph outputs
    notes: list[str] = field(default_factory=list)
    oracle: bool = True                               # False: nothing to compare with, only run

    @property
    def relative(self) -> float:
        """max abs error / max |value| of the tensor where the ratio is worst."""
        return self.max_abs_error / max(self.max_abs_output, 1e-30)

    def to_dict(self) -> dict:
        """The JSON form (`prune --json`)."""
        finite = lambda v: v if math.isfinite(v) else None  # strict JSON has no Infinity
        return {"ok": self.ok, "file": self.file, "checker": self.checker,
                "max_abs_error": finite(self.max_abs_error), "max_abs_value": finite(self.max_abs_output),
                "relative": finite(self.relative), "tolerance": self.tolerance, "intermediates": self.compared,
                "notes": self.notes}

    def describe(self) -> str:
        """One line for the report."""
        where = f"{self.file} (reopened from disk): " if self.file else ""
        if not self.oracle:
            return (f"check: {where}onnx full checker {self.checker}; runs in onnxruntime (all optimizations)"
                    + ("" if self.ok else f": {'; '.join(self.notes)}"))
        what = "outputs" + (f" and {len(self.compared)} intermediate tensors" if self.compared else "")
        return (f"check: {where}onnx full checker {self.checker}; onnxruntime {what} vs oracle: max abs error "
                f"{self.max_abs_error:.3g} = {self.relative:.2e} x max|value| (tolerance {self.tolerance:g})")


def tolerance_for(graph: Graph) -> float:
    """DESIGN.md's 1e-4 × max |value| for float32 models; fp16 and bf16 models compute with a
    coarser rounding (ulp 1e-3 and 8e-3), so their tolerance is 1e-2 and 5e-2."""
    names = {np.dtype(np.float16).name: 1e-2, "bfloat16": 5e-2}
    worst = 1e-4
    for o in graph.outputs:
        info = graph.info(o)
        dtype = info.dtype if info is not None else None
        worst = max(worst, names.get(getattr(dtype, "name", ""), 1e-4))
    return worst


def check(graph: Graph, oracle: Oracle, pruned: onnx.ModelProto | str | os.PathLike, seeds=(0, 1, 2),
          tolerance: float | None = None, base_dir: str | os.PathLike | None = None) -> Check:
    """Full onnx checker on the pruned model (a file, as written, or a ModelProto whose external
    data lies in `base_dir`), then oracle vs pruned in onnxruntime with all optimizations
    (tolerance: by the outputs' dtype by default)."""
    if isinstance(pruned, onnx.ModelProto) and base_dir is not None:
        fd, file = tempfile.mkstemp(suffix=".onnx", dir=base_dir)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(pruned.SerializeToString())
            result = check(graph, oracle, file, seeds, tolerance)
            result.file = None
            return result
        finally:
            os.unlink(file)
    tolerance = tolerance_for(graph) if tolerance is None else tolerance
    file = None if isinstance(pruned, onnx.ModelProto) else os.fspath(pruned)
    try:
        onnx.checker.check_model(pruned if file is None else file, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        return Check(False, math.inf, 0.0, tolerance, f"failed: {str(e).strip().splitlines()[0]}", file)
    model = pruned if file is None else onnx.load(file, load_external_data=False)
    outputs = [o.name for o in oracle.model.graph.output]
    feeds = [random_inputs(graph, s) for s in seeds]
    # one model in memory at a time: the oracle's runs, then the pruned model's
    a = oracle.session()
    expected = oracle.run(a, feeds, outputs)
    del a
    oracle.close()
    b = session(pruned if file is None else file)
    got = [b.run(outputs, f) for f in feeds]
    del b
    result = Check(True, 0.0, 0.0, tolerance, "passed", file)
    _compare(result, outputs, expected, got, oracle)
    trivial = _trivial(outputs, expected)
    if trivial:
        result.notes.append(f"outputs {', '.join(trivial)} are ~0, overflow or do not vary with the input: "
                            f"intermediate tensors compared too")
        names = _intermediates(graph, oracle, model)
        if names:
            a = oracle.session(names)
            expected = oracle.run(a, feeds, names)
            del a
            oracle.close()
            b = session(with_outputs(model, names), base_dir=None if file is None else os.path.dirname(file))
            got = [b.run(names, f) for f in feeds]
            result.compared = _compare(result, names, expected, got, oracle, intermediate=True)
            if len(result.compared) < len(names):
                result.notes.append(f"{len(names) - len(result.compared)} intermediate tensors left out: their "
                                    "channels are split into attention heads")
        if not result.compared:
            result.notes.append("no intermediate tensor of the pruned model could be compared")
    return result


def _compare(result: Check, names: list[str], expected, got, oracle: Oracle, intermediate: bool = False) -> list[str]:
    """Per tensor: max abs error over the seeds against tolerance × max |oracle value|, on the
    entries where the oracle is finite (where it overflows, to inf or NaN, nothing can be
    compared; an inf/NaN of the pruned model where the oracle is finite is an error). An
    `intermediate` tensor whose kept channels the oracle cannot pick out (channels split into
    attention heads) is left out; returns the names compared."""
    compared = []
    for k, name in enumerate(names):
        if intermediate and any(oracle.restrict(name, e[k]).shape != g[k].shape for e, g in zip(expected, got)):
            continue
        compared.append(name)
        finite = [e[k][np.isfinite(e[k])] for e in expected]
        top = max(float(np.max(np.abs(f))) if f.size else 0.0 for f in finite)
        err = 0.0
        for e, g in zip(expected, got):
            x = oracle.restrict(name, e[k]).astype(np.float64)
            y = g[k].astype(np.float64)
            if x.shape != y.shape:
                result.ok = False
                result.notes.append(f"tensor '{name}': shape {list(y.shape)} where the oracle has {list(x.shape)}")
                err = math.inf
                continue
            ok = np.isfinite(x)
            if ok.any():
                err = max(err, float(np.max(np.abs(x[ok] - y[ok]))))
        if not err <= result.tolerance * max(top, TINY):
            result.ok = False
        if err / max(top, 1e-30) >= result.relative or not math.isfinite(err):
            result.max_abs_error, result.max_abs_output = err, top
    return compared


def _trivial(names: list[str], runs) -> list[str]:
    """Outputs that are ~0, identical for every input, or overflowing (inf/NaN somewhere)."""
    out = []
    for k, name in enumerate(names):
        values = [r[k] for r in runs]
        top = max(float(np.max(np.abs(v))) if v.size else 0.0 for v in values)
        same = all(np.array_equal(values[0], v) for v in values[1:])
        if not math.isfinite(top) or top < TINY or (len(values) > 1 and same):
            out.append(name)
    return out


def _intermediates(graph: Graph, oracle: Oracle, model: onnx.ModelProto) -> list[str]:
    """Layer outputs present in both models under one name, spread over the depth of the graph."""
    produced = {o for n in model.graph.node for o in n.output if o}
    layers = {"Conv", "ConvTranspose", "Gemm", "MatMul", "BatchNormalization", "Add", "Concat", "Mul"}
    names = [o for n in graph.topological_nodes() for node in [graph.nodes[n]] if node.op_type in layers
             for o in node.output[:1] if o in produced and o not in graph.outputs]
    if len(names) > INTERMEDIATES:
        step = len(names) / INTERMEDIATES
        names = [names[int(i * step)] for i in range(INTERMEDIATES)]
    return names


def check_runs(graph: Graph, model: str | os.PathLike, seeds=(0,)) -> Check:
    """A model with no oracle (a grown one): the file passes onnx's full checker, opens in a fresh
    onnxruntime session with all optimizations and gives finite outputs."""
    file = os.fspath(model)
    try:
        onnx.checker.check_model(file, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        return Check(False, math.inf, 0.0, 0.0, f"failed: {str(e).strip().splitlines()[0]}", file, oracle=False)
    top = 0.0
    for s in seeds:
        for y in session(file).run(None, random_inputs(graph, s)):
            if y.size and not np.all(np.isfinite(y)):
                return Check(False, math.inf, 0.0, 0.0, "passed", file, notes=["outputs are not finite"], oracle=False)
            top = max(top, float(np.max(np.abs(y))) if y.size else 0.0)
    return Check(True, 0.0, top, 0.0, "passed", file, oracle=False)


def dynamic_batch(graph: Graph, model: onnx.ModelProto, base_dir: str | os.PathLike | None = None
                  ) -> tuple[onnx.ModelProto, str | None]:
    """The pruned model with the file's symbolic batch dimension back on its inputs and outputs,
    if it computes each sample of a batch of 2 as it computes that sample alone (a Reshape whose
    shape load folded from batch 1 would not); else the model as it is, with the reason.
    `base_dir`: where the model's external data lies."""
    names = [vi.name for vi in list(model.graph.input) + list(model.graph.output)]
    batch = {n: graph.declared[n].shape[0] for n in names if n in graph.declared and graph.declared[n].shape
             and not isinstance(graph.declared[n].shape[0], int)}
    inputs = [i for i in graph.inputs if i in batch]
    if not inputs or any(i not in batch for i in graph.inputs):
        return model, None
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for vi in list(m.graph.input) + list(m.graph.output):
        if vi.name in batch and vi.type.tensor_type.shape.dim:
            d = vi.type.tensor_type.shape.dim[0]
            d.Clear()
            d.dim_param = batch[vi.name] or "batch"
    del m.graph.value_info[:]
    try:
        one = [random_inputs(graph, s) for s in (0, 1)]
        both = {k: np.concatenate([f[k] for f in one]) for k in one[0]}
        sess = session(m, base_dir=base_dir)
        apart = [sess.run(None, f) for f in one]
        together = sess.run(None, both)
    except Exception as e:  # onnxruntime refuses the batch: a shape was fixed
        return model, f"the written model keeps batch {graph.static_shape(inputs[0], 'graph input')[0]} " \
                      f"(at batch 2: {str(e).strip().splitlines()[0][:120]})"
    for k, y in enumerate(together):
        x = np.concatenate([a[k] for a in apart])
        if x.shape != y.shape or not np.allclose(x, y, rtol=1e-4, atol=1e-5 * max(1e-30, float(np.max(np.abs(x))))):
            return model, "the written model keeps its fixed batch (at batch 2 it does not compute each sample alike)"
    return m, None
