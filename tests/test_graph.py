"""Graph loading: sources, external data, symbolic dims, exporter clutter, bad files."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import morphonnx
from morphonnx import BadInput
from morphonnx.graph import parse_input_shape

from conftest import init, model, tensor


def conv_model(batch="N", opset=17) -> onnx.ModelProto:
    return model([helper.make_node("Conv", ["x", "w"], ["y"], name="conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1])],
                 [tensor("x", [batch, 3, 8, 8])], [tensor("y", [batch, 4, 8, 8])], [init("w", (4, 3, 3, 3))],
                 opset=opset)


def test_load_path_and_modelproto_agree(tmp_path):
    m = conv_model()
    onnx.save(m, tmp_path / "m.onnx")
    g1, g2 = morphonnx.load(tmp_path / "m.onnx"), morphonnx.load(m)
    assert g1.static_shape("y", "") == g2.static_shape("y", "") == (1, 4, 8, 8)
    assert list(g1.nx.nodes) == ["conv"] and g1.inputs == ["x"]


def test_load_never_modifies_the_input(tmp_path):
    m = conv_model()
    before = m.SerializeToString()
    morphonnx.load(m, batch=4)
    assert m.SerializeToString() == before


@pytest.mark.parametrize("opset", [11, 13, 17, onnx.defs.onnx_opset_version()])
def test_opsets(opset):
    assert morphonnx.load(conv_model(opset=opset)).static_shape("y", "") == (1, 4, 8, 8)


def test_batch_and_input_shape_overrides():
    assert morphonnx.load(conv_model(), batch=8).static_shape("y", "") == (8, 4, 8, 8)
    g = morphonnx.load(conv_model(), input_shapes={"x": (2, 3, 16, 16)})
    assert g.static_shape("y", "") == (2, 4, 16, 16)


def test_bad_shape_overrides():
    with pytest.raises(BadInput, match="not a graph input"):
        morphonnx.load(conv_model(), input_shapes={"nope": (1, 3, 8, 8)})
    with pytest.raises(BadInput, match="rank 2"):
        morphonnx.load(conv_model(), input_shapes={"x": (1, 3)})
    with pytest.raises(BadInput, match="NAME=d0"):
        parse_input_shape("x=1,a,3")
    assert parse_input_shape("in:0=1,3,224,224") == ("in:0", (1, 3, 224, 224))


def test_symbolic_dim_that_matters_is_a_clear_error():
    m = model([helper.make_node("Conv", ["x", "w"], ["y"], name="conv", kernel_shape=[3, 3])],
              [tensor("x", [1, 3, "H", "W"])], [tensor("y", None)], [init("w", (4, 3, 3, 3))])
    g = morphonnx.load(m)
    with pytest.raises(BadInput, match=r"output 0 of Conv 'conv'.*--input-shape"):
        morphonnx.cost_model(g)
    assert morphonnx.cost_model(morphonnx.load(m, input_shapes={"x": (1, 3, 10, 10)})).total("macs") == 4 * 64 * 27


def test_external_data_is_read_lazily_and_checked(tmp_path):
    m = conv_model()
    expected = onnx.numpy_helper.to_array(m.graph.initializer[0])
    onnx.save(m, tmp_path / "m.onnx", save_as_external_data=True, location="m.onnx.data", size_threshold=0)
    g = morphonnx.load(tmp_path / "m.onnx")
    assert np.array_equal(g.array("w"), expected)
    (tmp_path / "m.onnx.data").unlink()
    with pytest.raises(BadInput, match=r"external data file .*m.onnx.data.* of initializer 'w' is missing"):
        morphonnx.load(tmp_path / "m.onnx")


def test_bad_files(tmp_path):
    with pytest.raises(BadInput, match="no such file"):
        morphonnx.load(tmp_path / "missing.onnx")
    (tmp_path / "text.onnx").write_text("this is not a model\n" * 10)
    with pytest.raises(BadInput, match="not .*ONNX model"):
        morphonnx.load(tmp_path / "text.onnx")
    data = conv_model().SerializeToString()
    (tmp_path / "cut.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(BadInput, match="cut.onnx: not .*ONNX model"):
        morphonnx.load(tmp_path / "cut.onnx")
    with pytest.raises(BadInput, match="not a file"):
        morphonnx.load(tmp_path)


def test_exporter_clutter_is_folded_without_touching_parameters():
    """The dynamo exporter's zero conv bias: Expand(CastLike(0, x), Expand(Shape(W)[0:1], [1]))."""
    nodes = [
        helper.make_node("Shape", ["w"], ["s"], start=0, end=1),
        helper.make_node("Constant", [], ["one"], value_ints=[1]),
        helper.make_node("Expand", ["s", "one"], ["s2"]),
        helper.make_node("Constant", [], ["zero"], value=helper.make_tensor("z", TensorProto.FLOAT, [], [0.0])),
        helper.make_node("CastLike", ["zero", "x"], ["zero_x"]),
        helper.make_node("Expand", ["zero_x", "s2"], ["bias"]),
        helper.make_node("Conv", ["x", "w", "bias"], ["y"], name="conv", kernel_shape=[3, 3]),
    ]
    m = model(nodes, [tensor("x", ["N", 3, 8, 8])], [tensor("y", None)], [init("w", (4, 3, 3, 3))])
    g = morphonnx.load(m)
    assert [n.op_type for n in g.model.graph.node] == ["Conv"]
    assert np.array_equal(g.array("bias"), np.zeros(4, np.float32))
    cm = morphonnx.cost_model(g)
    assert cm.params == 4 * 3 * 9  # the folded zero bias is not a parameter


def test_local_functions_are_inlined():
    f = helper.make_function("local", "Act", ["a"], ["b"], [helper.make_node("Relu", ["a"], ["b"])],
                             [helper.make_opsetid("", 17)])
    m = model([helper.make_node("Act", ["x"], ["y"], domain="local", name="act")],
              [tensor("x", [1, 4])], [tensor("y", [1, 4])], opset_imports=[helper.make_opsetid("", 17),
                                                                           helper.make_opsetid("local", 1)])
    m.functions.append(f)
    g = morphonnx.load(m)
    assert [n.op_type for n in g.model.graph.node] == ["Relu"]


def test_unnamed_nodes_get_unique_names():
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Relu", ["a"], ["b"])]
    g = morphonnx.load(model(nodes, [tensor("x", [1, 4])], [tensor("b", [1, 4])]))
    assert len(set(g.nodes)) == 2 and g.nx.number_of_edges() == 1


# ---- constants: whatever does not depend on the graph inputs -----------------------------------------

def _conv(x, w, b, name="conv"):
    return helper.make_node("Conv", [x, w, b], [name + "_y"], name=name, kernel_shape=[1, 1])


def test_bias_through_identity_is_read_directly_under_the_parameter_name():
    nodes = [helper.make_node("Identity", ["b"], ["routed"]), _conv("x", "w", "routed")]
    g = morphonnx.load(model(nodes, [tensor("x", [1, 3, 4, 4])], [tensor("conv_y", None)],
                             [init("w", (4, 3, 1, 1)), init("b", (4,), seed=1)]))
    assert [n.op_type for n in g.model.graph.node] == ["Conv"]
    bias = g.nodes["conv"].input[2]
    assert g.is_constant(bias) and np.array_equal(g.array(bias), numpy_helper.to_array(init("b", (4,), seed=1)))
    assert g.origins.get(bias, bias) == "b"  # reports and masks name the initializer


def test_constant_node_becomes_an_initializer():
    value = numpy_helper.from_array(np.arange(4, dtype=np.float32), "v")
    nodes = [helper.make_node("Constant", [], ["b"], value=value), _conv("x", "w", "b")]
    g = morphonnx.load(model(nodes, [tensor("x", [1, 3, 4, 4])], [tensor("conv_y", None)], [init("w", (4, 3, 1, 1))]))
    assert [n.op_type for n in g.model.graph.node] == ["Conv"]
    assert "b" in g.initializers and np.array_equal(g.array("b"), np.arange(4))


def test_constant_subgraph_feeding_a_conv_weight_is_folded_and_named_by_its_parameter():
    """Weight standardization (NF-ResNet): w' = (w - mean(w)) * gain, computed in the graph."""
    nodes = [helper.make_node("ReduceMean", ["w"], ["m"], axes=[1, 2, 3], keepdims=1),
             helper.make_node("Sub", ["w", "m"], ["c"]),
             helper.make_node("Mul", ["c", "gain"], ["ws"]),
             helper.make_node("Conv", ["x", "ws"], ["y"], name="conv", kernel_shape=[3, 3])]
    w, gain = init("w", (4, 3, 3, 3)), init("gain", (4, 1, 1, 1), seed=2)
    g = morphonnx.load(model(nodes, [tensor("x", [1, 3, 8, 8])], [tensor("y", None)], [w, gain]))
    assert [n.op_type for n in g.model.graph.node] == ["Conv"]
    wv, gv = numpy_helper.to_array(w), numpy_helper.to_array(gain)
    assert np.allclose(g.array("ws"), (wv - wv.mean(axis=(1, 2, 3), keepdims=True)) * gv, atol=1e-6)
    assert g.origins["ws"] == "w" and set(g.derived["ws"]) == {"w", "gain"}


def test_chained_relayouts_of_a_parameter_fold():
    """Reshape then Transpose of one parameter (the dynamo swin_t's `view_13`, read by a second
    re-layout in the same pass, used to end in a traceback from the reference evaluator)."""
    nodes = [helper.make_node("Reshape", ["w", "shape"], ["view"]),
             helper.make_node("Transpose", ["view"], ["wt"], perm=[1, 0]),
             helper.make_node("MatMul", ["x", "wt"], ["y"], name="mm")]
    g = morphonnx.load(model(nodes, [tensor("x", [1, 6])], [tensor("y", None)],
                             [init("w", (24,)), init("shape", None, value=[4, 6], dtype=np.int64)]))
    assert [n.op_type for n in g.model.graph.node] == ["MatMul"]
    assert g.array("wt").shape == (6, 4) and g.origins["wt"] == "w"
    assert morphonnx.cost_model(g).params == 24


def test_shapes_inference_cannot_know_come_from_a_run():
    """An onnxruntime contrib op (com.microsoft.Gelu, in ORT-optimized models): onnx's inference
    knows nothing of it, so the next conv's shapes are unknown although the input is static."""
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], name="c1", kernel_shape=[3, 3], pads=[1] * 4),
             helper.make_node("Gelu", ["a"], ["b"], name="gelu", domain="com.microsoft"),
             helper.make_node("Conv", ["b", "w2"], ["y"], name="c2", kernel_shape=[3, 3])]
    m = model(nodes, [tensor("x", [1, 3, 8, 8])], [tensor("y", None)], [init("w1", (4, 3, 3, 3)), init("w2", (5, 4, 3, 3))],
              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    g = morphonnx.load(m)
    assert g.info("b").shape == (1, 4, 8, 8) and g.info("y").shape == (1, 5, 6, 6)
    assert "b" in g.measured
    assert morphonnx.cost_model(g).total("macs") == 8 * 8 * 4 * 27 + 6 * 6 * 5 * 36


def test_unknown_shape_with_static_inputs_does_not_ask_for_input_shape():
    nodes = [helper.make_node("Mystery", ["x"], ["a"], name="m", domain="my.ops"),
             helper.make_node("Conv", ["a", "w"], ["y"], name="c", kernel_shape=[1, 1])]
    m = model(nodes, [tensor("x", [1, 3, 4, 4])], [tensor("y", None)], [init("w", (4, 3, 1, 1))],
              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("my.ops", 1)])
    with pytest.raises(BadInput, match="unknown: neither shape inference nor a run in onnxruntime") as e:
        morphonnx.cost_model(morphonnx.load(m))
    assert "--input-shape" not in str(e.value)
