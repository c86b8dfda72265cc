"""The equivalence check: on the written file, every output, and intermediate tensors where the
outputs prove nothing (~0 or constant)."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

import morphonnx
from morphonnx.groups import find_groups
from morphonnx.masks import masks_from_sources
from morphonnx.output import Outputs
from morphonnx.rewrite import prune
from morphonnx.verify import check

from conftest import Net


def two_heads(scale: float = 1.0) -> onnx.ModelProto:
    """conv-BN-ReLU → conv-BN-ReLU, then two heads: a pooled one (× scale) and a 1x1 conv one."""
    n = Net(size=6)
    x = n.cbr("x", 4, 8, name="a")
    y = n.cbr(x, 8, 8, name="b")
    pooled = n.node("Flatten", [n.node("GlobalAveragePool", [y])], "flat", axis=1)
    head = n.node("Mul", [pooled, n.const(np.float32(scale), "scale")], "head")
    side = n.conv(x, 8, 2, k=1, name="side")
    return n.model(head, side)


def pruned(scale: float = 1.0):
    g = morphonnx.load(two_heads(scale))
    gr = find_groups(g)
    masks = masks_from_sources(gr, {"a.bn": [1, 0, 1, 1, 0, 1, 1, 1], "b.bn": [0, 1, 1, 1, 0, 1, 1, 0]})
    return g, prune(gr, masks)


def tamper(model: onnx.ModelProto, name: str) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for t in m.graph.initializer:
        if t.name == name:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * 1.01, name))
    return m


def test_checks_the_written_file(tmp_path):
    g, result = pruned()
    with Outputs() as out:
        staged = out.model(tmp_path / "p.onnx", result.model, external=True)
        c = check(g, result.oracle, staged)
        out.commit()
    assert c.ok and c.file == str(staged) and c.relative < 1e-5 and not c.compared
    assert check(g, result.oracle, tmp_path / "p.onnx").ok


def test_every_output_is_compared():
    """An error in the small second head fails the check although the first head is fine."""
    g, result = pruned()
    assert check(g, result.oracle, result.model).ok
    assert not check(g, result.oracle, tamper(result.model, "side.weight")).ok


def test_tiny_outputs_bring_intermediate_tensors_in():
    """Outputs of ~1e-12 would pass whatever the model computes; the layers' outputs do not."""
    g, result = pruned(scale=1e-12)
    c = check(g, result.oracle, result.model)
    assert c.ok and c.compared and "intermediate tensors compared" in c.notes[0]
    broken = tamper(result.model, "b.bn.weight")
    assert not check(g, result.oracle, broken).ok


def test_outputs_that_do_not_vary_bring_intermediate_tensors_in():
    g, result = pruned(scale=0.0)
    c = check(g, result.oracle, result.model)
    assert c.ok and c.compared
    assert not check(g, result.oracle, tamper(result.model, "b.bn.weight")).ok


def test_a_symbolic_batch_stays_symbolic_in_the_written_model(tmp_path):
    """The bundled small CNN declares a symbolic batch: the pruned file keeps it and runs at batch 3;
    a model whose batch was baked into a Reshape keeps batch 1, with a warning."""
    import numpy as np
    import onnxruntime as ort
    from conftest import SMALL_CNN
    from morphonnx.cli import main
    out = tmp_path / "p.onnx"
    assert main(["prune", str(SMALL_CNN), "--threshold", "0.9", "-o", str(out)]) == 0
    s = ort.InferenceSession(str(out))
    assert not isinstance(s.get_inputs()[0].shape[0], int)
    assert s.run(None, {s.get_inputs()[0].name: np.zeros((3, 3, 32, 32), np.float32)})[0].shape[0] == 3
    n = Net(size=4)
    y = n.cbr("x", 4, 8, name="a")
    flat = n.node("Reshape", [y, n.const([1, -1], dtype=np.int64)], "flat")  # batch 1 baked in
    m = n.model(n.node("Gemm", [flat, n.param((3, 8 * 16), "fc.weight")], "fc", transB=1))
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    g = morphonnx.load(m)
    from morphonnx.verify import dynamic_batch
    same, why = dynamic_batch(g, m)
    assert same is m and "keeps" in why


def test_overflowing_outputs_bring_intermediate_tensors_in():
    """Outputs of inf (a model that overflows on these inputs) prove nothing: the layers before
    the overflow are compared, and an error there fails."""
    g, result = pruned(scale=3e38)
    c = check(g, result.oracle, result.model)
    assert c.ok and c.compared and "overflow" in c.notes[0]
    assert not check(g, result.oracle, tamper(result.model, "b.bn.weight")).ok
