"""Groups on the zoo: how much of each network is prunable, and every pin has its reason."""
from __future__ import annotations

import pytest

import morphonnx
from morphonnx.groups import find_groups

pytestmark = pytest.mark.zoo

MOSTLY_PRUNABLE = ["resnet50", "mobilenet_v2", "densenet121", "googlenet", "inception_v3", "efficientnet_b0",
                   "vgg11_bn"]


@pytest.mark.parametrize("kind", ["folded", "bn"])
@pytest.mark.parametrize("name", MOSTLY_PRUNABLE)
def test_prunable_share(zoo, name, kind):
    """At least 95% of source output channels are prunable, all but the classifier outputs."""
    out, manifest = zoo
    gr = find_groups(morphonnx.load(out / manifest[name]["files"][kind]))
    s = gr.summary()
    classifier = s["pinned_by_reason"].get("graph output", 0)
    assert s["prunable_source_channels"] >= 0.95 * (s["source_channels"] - classifier)
    assert all(g.pinned for g in gr.groups if g.pinned) and set(s["pinned_by_reason"]) == {"graph output"}


@pytest.mark.parametrize("kind", ["folded", "bn"])
@pytest.mark.parametrize("name, hidden", [("convnext_tiny", 4 * 96), ("vit_b_16", 3072)])
def test_mlp_hidden_channels_are_prunable(zoo, name, kind, hidden):
    out, manifest = zoo
    gr = find_groups(morphonnx.load(out / manifest[name]["files"][kind]))
    mlp = [g for g in gr.groups if not g.pinned and g.size == hidden]
    assert len(mlp) >= 3
    assert all(reason for reason in gr.summary()["pinned_by_reason"])
