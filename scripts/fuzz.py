#!/usr/bin/env python3
"""Random-graph fuzzer of the rewrite's correctness contract (DESIGN.md).

Generates random valid ONNX DAGs (opset 17/18, NCHW float32, batch 1, channels 1-16, spatial
1-9) of Conv (plain, depthwise with a multiplier, grouped), BatchNormalization, Relu/Sigmoid/
HardSwish, Add, Mul (a [1,C,1,1] constant, an SE gate, two branches), Concat/Split/Slice on the
channel axis, Gemm (after GlobalAveragePool+Flatten or a spatial Flatten), Flatten, Reshape,
Transpose, MaxPool/AveragePool/GlobalAveragePool/ReduceMean, Resize, Pad and If (a subgraph
reading an outer-scope tensor; the condition a constant or a graph input). Every model passes
onnx's full checker and runs in onnxruntime (else it is discarded and regenerated).

Then random masks (per unpinned group keep 0-100%, fully dead groups included) and the
contract, through the command line in-process: `morphonnx prune MODEL --masks M -o OUT`
passes if it exits 0 and the written file, reopened from disk, matches the oracle (checked
again here, independently, with `morphonnx.verify.check`), or if it exits 2 with one stderr
line. Anything else (a traceback, exit 1, a file that fails to reopen) is a failure; the model
and masks are saved under OUT/failures/<case id>/ with the command that reproduces it.

    python scripts/fuzz.py --cases 1000 --seed 0 --out fuzz-out
    python scripts/fuzz.py --case 17 --seed 0 --out fuzz-out     # one case again
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


# ---- the generator -----------------------------------------------------------------------------------

class Gen:
    """Builds one random model. Tensors are tracked with their static shapes."""

    def __init__(self, rng: np.random.Generator, opset: int):
        self.rng = rng
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.used: set[str] = set()
        self.ops: list[str] = []  # constructs used, for the summary
        self.n = 0

    # -- helpers
    def name(self, op: str) -> str:
        self.n += 1
        return f"{op.lower()}{self.n}"

    def randint(self, lo: int, hi: int) -> int:
        """Uniform in [lo, hi]."""
        return int(self.rng.integers(lo, hi + 1))

    def const(self, value, dtype=np.float32, name: str | None = None) -> str:
        name = name or self.name("c")
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def param(self, shape, scale: float = 0.5, offset: float = 0.0) -> str:
        return self.const(self.rng.standard_normal(shape) * scale + offset)

    def node(self, op: str, inputs, out_shapes, **attrs):
        name = self.name(op)
        outs = [name] if len(out_shapes) == 1 else [f"{name}_{i}" for i in range(len(out_shapes))]
        self.nodes.append(helper.make_node(op, list(inputs), outs, name=name, **attrs))
        for t in inputs:
            if t in self.shapes:
                self.used.add(t)
        for o, s in zip(outs, out_shapes):
            self.shapes[o] = tuple(int(d) for d in s)
        self.ops.append(op)
        return outs[0] if len(outs) == 1 else outs

    def pick(self, rank: int | None = 4, pred=None) -> str | None:
        """An existing activation, favouring recent ones."""
        cands = [t for t, s in self.shapes.items() if (rank is None or len(s) == rank) and (pred is None or pred(s))]
        if not cands:
            return None
        w = np.arange(1, len(cands) + 1, dtype=float) ** 2
        return cands[int(self.rng.choice(len(cands), p=w / w.sum()))]

    # -- ops on NCHW tensors
    def conv(self, x: str, kind: str | None = None, cout: int | None = None, same: bool = False) -> str:
        _, c, h, w = self.shapes[x]
        kind = kind or self.rng.choice(["plain", "plain", "depthwise", "grouped"])
        group = 1
        if kind == "depthwise":
            group = c
            cout = cout or c * self.randint(1, max(1, min(3, 16 // c)))
        elif kind == "grouped":
            divs = [g for g in range(2, c + 1) if c % g == 0]
            if not divs:
                kind, group = "plain", 1
            else:
                group = int(self.rng.choice(divs))
                cout = cout or group * self.randint(1, max(1, 16 // group))
        cout = cout or self.randint(1, 16)
        if same:
            k = int(self.rng.choice([1, 3]))
            stride, dil, pads = 1, 1, [k // 2] * 4
        else:
            k = int(self.rng.choice([1, 1, 3, 3, 5]))
            stride = int(self.rng.choice([1, 1, 2]))
            dil = int(self.rng.choice([1, 1, 1, 2]))
            pads = [self.randint(0, k // 2 + 1) if k > 1 else 0 for _ in range(4)]
        eff = dil * (k - 1) + 1
        oh = (h + pads[0] + pads[2] - eff) // stride + 1
        ow = (w + pads[1] + pads[3] - eff) // stride + 1
        if oh < 1 or ow < 1:
            k, stride, dil, pads, oh, ow = 1, 1, 1, [0] * 4, h, w
        ins = [x, self.param((cout, c // group, k, k))]
        if self.rng.random() < 0.6:
            ins.append(self.param((cout,)))
        self.ops.append(f"Conv:{kind}")
        return self.node("Conv", ins, [(1, cout, oh, ow)], kernel_shape=[k, k], strides=[stride] * 2,
                         dilations=[dil] * 2, pads=pads, group=group)

    def bn(self, x: str) -> str:
        c = self.shapes[x][1]
        ins = [x, self.param((c,), 0.5, 1.0), self.param((c,), 0.5, 0.3), self.param((c,)),
               self.const(self.rng.uniform(0.5, 1.5, c))]
        return self.node("BatchNormalization", ins, [self.shapes[x]], epsilon=float(self.rng.choice([1e-5, 1e-3])))

    def act(self, x: str) -> str:
        op = str(self.rng.choice(["Relu", "Relu", "Sigmoid", "HardSwish"]))
        return self.node(op, [x], [self.shapes[x]])

    def cbr(self, x: str) -> str:
        y = self.conv(x)
        if self.rng.random() < 0.7:
            y = self.bn(y)
        return self.act(y) if self.rng.random() < 0.8 else y

    def add(self, x: str) -> str:
        s = self.shapes[x]
        others = [t for t, z in self.shapes.items() if z == s and t != x]
        if others and self.rng.random() < 0.6:
            y = others[int(self.rng.integers(len(others)))]
        elif len(s) == 4 and self.rng.random() < 0.8:
            y = self.conv(x, kind="plain", cout=s[1], same=True)  # a residual branch
            if self.rng.random() < 0.5:
                y = self.bn(y)
        else:
            shape = (1, s[1], 1, 1) if len(s) == 4 else (s[1],)
            y = self.param(shape)
        op = "Add" if self.rng.random() < 0.85 else "Mul"
        ins = [x, y] if self.rng.random() < 0.5 else [y, x]
        return self.node(op, ins, [s])

    def mul(self, x: str) -> str:
        s = self.shapes[x]
        r = self.rng.random()
        if len(s) == 4 and r < 0.4:  # SE-style gate [N,C,1,1]
            c = s[1]
            if self.rng.random() < 0.5:
                p = self.node("GlobalAveragePool", [x], [(1, c, 1, 1)])
            elif self.opset >= 18:
                p = self.node("ReduceMean", [x, self.const([2, 3], np.int64)], [(1, c, 1, 1)], keepdims=1)
            else:
                p = self.node("ReduceMean", [x], [(1, c, 1, 1)], axes=[2, 3], keepdims=1)
            mid = self.randint(1, 8)
            h = self.node("Conv", [p, self.param((mid, c, 1, 1)), self.param((mid,))], [(1, mid, 1, 1)],
                          kernel_shape=[1, 1])
            h = self.node("Relu", [h], [(1, mid, 1, 1)])
            h = self.node("Conv", [h, self.param((c, mid, 1, 1)), self.param((c,))], [(1, c, 1, 1)],
                          kernel_shape=[1, 1])
            gate = self.node(str(self.rng.choice(["Sigmoid", "HardSigmoid"])), [h], [(1, c, 1, 1)])
            self.ops.append("SE")
            return self.node("Mul", [x, gate], [s])
        if r < 0.8:  # per-channel constant
            shape = (1, s[1], 1, 1) if len(s) == 4 else (1, s[1])
            if self.rng.random() < 0.2:
                shape = (1,) * len(s)  # scalar-like broadcast
            return self.node("Mul", [x, self.param(shape, 0.5, 1.0)], [s])
        return self.add(x)

    def concat(self, x: str) -> str:
        s = self.shapes[x]
        same = [t for t, z in self.shapes.items() if len(z) == 4 and z[2:] == s[2:] and t != x]
        ins = [x]
        for _ in range(self.randint(1, 2)):
            if same and self.rng.random() < 0.5:
                ins.append(same[int(self.rng.integers(len(same)))])
            else:
                ins.append(self.cbr_same(x))
        self.rng.shuffle(ins)
        c = sum(self.shapes[t][1] for t in ins)
        if c > 48:
            ins = ins[:2]
            c = sum(self.shapes[t][1] for t in ins)
        axis = 1 if self.rng.random() < 0.8 else -3
        return self.node("Concat", ins, [(1, c, s[2], s[3])], axis=axis)

    def cbr_same(self, x: str) -> str:
        y = self.conv(x, kind="plain", same=True)
        if self.rng.random() < 0.6:
            y = self.bn(y)
        return self.act(y) if self.rng.random() < 0.7 else y

    def split(self, x: str) -> str:
        _, c, h, w = self.shapes[x]
        if c < 2:
            return self.cbr(x)
        k = self.randint(2, min(4, c))
        if self.opset >= 18 and c % k == 0 and self.rng.random() < 0.5:
            sizes = [c // k] * k
            outs = self.node("Split", [x], [(1, n, h, w) for n in sizes], axis=1, num_outputs=k)
        else:
            cuts = sorted(self.rng.choice(np.arange(1, c), size=k - 1, replace=False).tolist())
            sizes = np.diff([0, *cuts, c]).tolist()
            outs = self.node("Split", [x, self.const(sizes, np.int64)], [(1, n, h, w) for n in sizes], axis=1)
        # use some of the pieces; the others stay dangling (become graph outputs) or join again
        return outs[int(self.rng.integers(len(outs)))]

    def slice(self, x: str) -> str:
        s = self.shapes[x]
        c = s[1]
        step = int(self.rng.choice([1, 1, 1, 2, -1]))
        if step > 0:
            start = self.randint(0, c - 1)
            end = self.randint(start + 1, c)
            n = len(range(start, end, step))
            st, en = start, end
            if self.rng.random() < 0.3:
                st = start - c  # negative index
            if self.rng.random() < 0.3 and end == c:
                en = 2 ** 31  # "to the end"
        else:
            start = self.randint(0, c - 1)
            end = self.randint(-1, start - 1)
            n = len(range(start, end, step))
            st, en = start, (end if end >= 0 else -c - 1)
        ins = [x, self.const([st], np.int64), self.const([en], np.int64)]
        if self.rng.random() < 0.8 or step != 1:
            ins.append(self.const([1 if self.rng.random() < 0.8 else -3], np.int64))
            if step != 1 or self.rng.random() < 0.5:
                ins.append(self.const([step], np.int64))
        return self.node("Slice", ins, [(1, n, *s[2:])])

    def pool(self, x: str) -> str:
        _, c, h, w = self.shapes[x]
        r = self.rng.random()
        if r < 0.25:
            return self.node("GlobalAveragePool", [x], [(1, c, 1, 1)])
        op = "MaxPool" if r < 0.6 else "AveragePool"
        k = min(self.randint(1, 3), h, w)
        stride = self.randint(1, 2)
        pads = [self.randint(0, k - 1) for _ in range(4)]
        oh = (h + pads[0] + pads[2] - k) // stride + 1
        ow = (w + pads[1] + pads[3] - k) // stride + 1
        attrs = dict(kernel_shape=[k, k], strides=[stride] * 2, pads=pads)
        if op == "AveragePool":
            attrs["count_include_pad"] = int(self.rng.integers(2))
        return self.node(op, [x], [(1, c, oh, ow)], **attrs)

    def resize(self, x: str) -> str:
        _, c, h, w = self.shapes[x]
        mode = str(self.rng.choice(["nearest", "linear"]))
        if self.rng.random() < 0.5 or h * 2 > 12:
            f = int(self.rng.choice([1, 2])) if h * 2 <= 12 else 1
            ins = [x, "", self.const([1, 1, f, f])]
            oh, ow = h * f, w * f
        else:
            oh, ow = self.randint(1, 9), self.randint(1, 9)
            ins = [x, "", "", self.const([1, c, oh, ow], np.int64)]
        return self.node("Resize", ins, [(1, c, oh, ow)], mode=mode)

    def pad(self, x: str) -> str:
        _, c, h, w = self.shapes[x]
        mode = str(self.rng.choice(["constant", "constant", "reflect", "edge"]))
        chan = mode == "constant" and self.rng.random() < 0.15  # pad the channel axis too
        p = [0, self.randint(0, 1) if chan else 0, self.randint(0, 2), self.randint(0, 2),
             0, self.randint(0, 1) if chan else 0, self.randint(0, 2), self.randint(0, 2)]
        if mode == "reflect":
            p = [0, 0, min(p[2], h - 1), min(p[3], w - 1), 0, 0, min(p[6], h - 1), min(p[7], w - 1)]
        ins = [x, self.const(p, np.int64)]
        if mode == "constant" and self.rng.random() < 0.6:
            ins.append(self.const(float(self.rng.standard_normal())))
        if chan:
            self.ops.append("Pad:channels")
        return self.node("Pad", ins, [(1, c + p[1] + p[5], h + p[2] + p[6], w + p[3] + p[7])], mode=mode)

    def transpose(self, x: str) -> str:
        s = self.shapes[x]
        perm = [0, *(1 + self.rng.permutation(3)).tolist()]
        t = self.node("Transpose", [x], [tuple(s[p] for p in perm)], perm=perm)
        ts = self.shapes[t]
        r = self.rng.random()
        if r < 0.4:
            t = self.node(str(self.rng.choice(["Relu", "Sigmoid"])), [t], [ts])
        elif r < 0.7:  # a per-channel constant in the permuted layout
            cshape = [1, 1, 1, 1]
            cshape[perm.index(1)] = s[1]
            t = self.node("Mul", [t, self.param(cshape, 0.5, 1.0)], [ts])
        if self.rng.random() < 0.15:
            return t  # leave it transposed (flattened or output)
        inv = np.argsort(perm).tolist()
        return self.node("Transpose", [t], [s], perm=inv)

    def reshape(self, x: str) -> str:
        s = self.shapes[x]
        _, c, h, w = s
        r = self.rng.random()
        if r < 0.4:
            shape = [1, c, w, h] if self.rng.random() < 0.5 else [1, c, h * w, 1]
            spec = list(shape)
            if self.rng.random() < 0.5:
                spec[1] = 0
            if self.rng.random() < 0.3:
                spec[2] = -1
            y = self.node("Reshape", [x, self.const(spec, np.int64)], [shape])
            if self.rng.random() < 0.5:
                y = self.node("Reshape", [y, self.const([1, c, h, w], np.int64)], [s])
            return y
        if r < 0.6:  # channels split in two (pins)
            if c % 2 == 0 and c >= 2:
                y = self.node("Reshape", [x, self.const([1, 2, c // 2 * h, w], np.int64)], [(1, 2, c // 2 * h, w)])
                return self.node("Reshape", [y, self.const([1, c, h, w], np.int64)], [s])
        spec = [1, -1] if self.rng.random() < 0.5 else [0, c * h * w]
        return self.node("Reshape", [x, self.const(spec, np.int64)], [(1, c * h * w)])

    def flatten(self, x: str) -> str:
        s = self.shapes[x]
        return self.node("Flatten", [x], [(1, int(np.prod(s[1:])))], axis=1)

    def gemm(self, x: str) -> str:
        s = self.shapes[x]
        if len(s) == 4:
            if self.rng.random() < 0.5:
                x = self.node("GlobalAveragePool", [x], [(1, s[1], 1, 1)])
            x = self.flatten(x)
        f = self.shapes[x][1]
        n = self.randint(1, 16)
        trans_b = int(self.rng.integers(2))
        ins = [x, self.param((n, f) if trans_b else (f, n))]
        if self.rng.random() < 0.7:
            ins.append(self.param((n,) if self.rng.random() < 0.8 else (1, n)))
        attrs = {"transB": trans_b}
        if self.rng.random() < 0.3:
            attrs["alpha"] = float(self.rng.uniform(0.5, 2))
        if self.rng.random() < 0.3 and len(ins) == 3:
            attrs["beta"] = float(self.rng.uniform(0.5, 2))
        return self.node("Gemm", ins, [(1, n)], **attrs)

    def on_2d(self, x: str) -> str:
        r = self.rng.random()
        if r < 0.4:
            return self.gemm(x)
        if r < 0.6:
            return self.node(str(self.rng.choice(["Relu", "Sigmoid"])), [x], [self.shapes[x]])
        if r < 0.75:
            return self.bn(x)
        if r < 0.9:
            return self.mul(x)
        return self.add(x)

    def if_(self, x: str) -> str:
        s = self.shapes[x]
        if self.rng.random() < 0.5:
            cond = self.const(bool(self.rng.integers(2)), np.bool_)
        else:
            cond = f"cond{self.n}"
            self.n += 1
            self.inputs.append(helper.make_tensor_value_info(cond, TensorProto.BOOL, []))

        def branch(tag: str) -> onnx.GraphProto:
            out = f"{tag}_out{self.n}"
            kind = self.rng.random()
            nodes, inits = [], []
            if kind < 0.4:
                nodes.append(helper.make_node(str(self.rng.choice(["Relu", "Sigmoid", "Identity"])), [x], [out]))
            elif kind < 0.7:
                cshape = (1, s[1], 1, 1) if len(s) == 4 else (1, s[1])
                cn = f"{tag}_scale{self.n}"
                inits.append(numpy_helper.from_array(
                    (self.rng.standard_normal(cshape) * 0.5 + 1).astype(np.float32), cn))
                nodes.append(helper.make_node("Mul", [x, cn], [out]))
            elif len(s) == 4:
                wn = f"{tag}_w{self.n}"
                inits.append(numpy_helper.from_array(
                    (self.rng.standard_normal((s[1], s[1], 1, 1)) * 0.5).astype(np.float32), wn))
                nodes.append(helper.make_node("Conv", [x, wn], [out], kernel_shape=[1, 1]))
            else:
                nodes.append(helper.make_node("Relu", [x], [out]))
            return helper.make_graph(nodes, f"{tag}{self.n}", [],
                                     [helper.make_tensor_value_info(out, TensorProto.FLOAT, list(s))], inits)

        self.ops.append("If")
        y = self.node("If", [cond], [s], then_branch=branch("then"), else_branch=branch("else"))
        self.used.add(x)
        return y

    # -- the whole model
    def build(self, steps: int) -> onnx.ModelProto:
        c, h, w = self.randint(1, 16), self.randint(1, 9), self.randint(1, 9)
        self.inputs.append(helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, h, w]))
        self.shapes["x"] = (1, c, h, w)
        x = self.cbr("x") if self.rng.random() < 0.8 else "x"
        table4 = [(self.cbr, 5), (self.conv, 2), (self.bn, 1), (self.act, 1), (self.add, 3), (self.mul, 2),
                  (self.concat, 2), (self.split, 1.5), (self.slice, 1.5), (self.pool, 1.5), (self.resize, 0.7),
                  (self.pad, 1), (self.transpose, 1), (self.reshape, 1), (self.if_, 0.7), (self.gemm, 0.5)]
        fns, weights = zip(*table4)
        p = np.array(weights) / sum(weights)
        for _ in range(steps):
            if self.rng.random() < 0.7:
                x = self.pick(4) or x
            if len(self.shapes[x]) == 4 and self.shapes[x][1] > 48:
                x = self.conv(x, kind="plain", cout=self.randint(1, 16))
            if len(self.shapes[x]) == 4:
                x = fns[int(self.rng.choice(len(fns), p=p))](x)
            elif len(self.shapes[x]) == 2:
                x = self.on_2d(x)
            else:
                x = self.pick(4) or x
        # heads: unconsumed 4D tensors often end in a conv (its inputs stay prunable)
        outputs = []
        for t, s in list(self.shapes.items()):
            if t in self.used or t == "x":
                continue
            if len(s) == 4 and self.rng.random() < 0.6:
                t = self.conv(t, kind="plain", cout=self.randint(1, 4)) if self.rng.random() < 0.6 else self.gemm(t)
            outputs.append(t)
        graph = helper.make_graph(self.nodes, "fuzz", self.inputs,
                                  [helper.make_tensor_value_info(o, TensorProto.FLOAT, list(self.shapes[o]))
                                   for o in outputs], self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)],
                                  producer_name="morphonnx-fuzz")
        model.ir_version = 8
        return model


def validate(model: onnx.ModelProto) -> str | None:
    """None if the model passes the full checker and runs in onnxruntime, else why not."""
    import onnxruntime as ort
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as e:  # noqa: BLE001
        return f"checker: {type(e).__name__}"
    try:
        opts = ort.SessionOptions()
        opts.log_severity_level = 4
        sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        feeds = {}
        for i in sess.get_inputs():
            feeds[i.name] = (np.zeros(i.shape, dtype=np.float32) if i.type == "tensor(float)"
                             else np.array(True))
        sess.run(None, feeds)
    except Exception as e:  # noqa: BLE001
        return f"onnxruntime: {type(e).__name__}"
    return None


def random_model(seed: int, max_tries: int = 50) -> tuple[onnx.ModelProto, int, dict[str, int], list[str]]:
    """A valid random model of this seed: (model, discards, discard reasons, constructs used)."""
    rng = np.random.default_rng([seed, 0x6675])
    reasons: dict[str, int] = {}
    for attempt in range(max_tries):
        g = Gen(rng, int(rng.choice([17, 18])))
        model = g.build(g.randint(2, 12))
        why = validate(model)
        if why is None:
            return model, attempt, reasons, g.ops
        reasons[why] = reasons.get(why, 0) + 1
    raise RuntimeError(f"seed {seed}: no valid model in {max_tries} tries ({reasons})")


def random_masks(model: onnx.ModelProto, seed: int) -> dict[str, list[int]]:
    """Per-source 0/1 masks: per unpinned group keep 0%, 100% or a random share (fully dead
    groups included); now and then one source disagrees with its group."""
    import morphonnx
    from morphonnx.groups import find_groups
    rng = np.random.default_rng([seed, 0x6d61])
    groups = find_groups(morphonnx.load(model))
    keep = {}
    for g in groups.groups:
        if g.pinned:
            keep[g.id] = np.ones(g.size, dtype=bool)
            continue
        r = rng.random()
        share = 0.0 if r < 0.08 else 1.0 if r < 0.18 else rng.random()
        keep[g.id] = rng.random(g.size) < share
    masks: dict[str, list[int]] = {}
    for s in groups.plan.sources:
        if s.node in masks:
            continue
        values = [int(keep[gid][k]) for _, gid, k in groups.source_channels(s)]
        if rng.random() < 0.05:
            values = rng.integers(0, 2, len(values)).tolist()
        masks[s.node] = values
    return masks


# ---- the harness ---------------------------------------------------------------------------------------

@dataclass
class Outcome:
    case: int
    status: str                 # "passed" | "refused" | "failure"
    kind: str = ""              # refusal message or failure class
    detail: str = ""
    discards: int = 0
    discard_reasons: dict[str, int] = field(default_factory=dict)
    ops: list[str] = field(default_factory=list)


def case_seed(seed: int, case: int) -> int:
    return seed * 1_000_003 + case


def _short(message: str) -> str:
    """A refusal message with names and numbers blanked, to count refusals by kind."""
    import re
    m = re.sub(r"'[^']*'", "'…'", message)
    m = re.sub(r"\d+", "N", m)
    return m[:140]


def run_case(case: int, seed: int = 0, out: str | os.PathLike | None = None) -> Outcome:
    """Generate case `case` of run `seed`, prune it through the CLI in-process, judge the contract."""
    from morphonnx.cli import main
    s = case_seed(seed, case)
    model, discards, reasons, ops = random_model(s)
    res = Outcome(case, "passed", discards=discards, discard_reasons=reasons, ops=ops)
    with tempfile.TemporaryDirectory(prefix="morphonnx-fuzz-") as tmp:
        mpath, kpath, opath = (os.path.join(tmp, n) for n in ("model.onnx", "masks.json", "pruned.onnx"))
        onnx.save(model, mpath)
        try:
            masks = random_masks(model, s)
        except Exception as e:  # noqa: BLE001  # find_groups crashed: the CLI will too; give it no masks
            masks = {}
            res.detail = f"masks: {type(e).__name__}: {e}"
        with open(kpath, "w") as f:
            json.dump({"masks": masks}, f)
        stdout, stderr = io.StringIO(), io.StringIO()
        try:
            with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
                code = main(["prune", mpath, "--masks", kpath, "-o", opath])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 2
        except Exception as e:  # noqa: BLE001
            tb = traceback.extract_tb(e.__traceback__)
            frame = next((f for f in reversed(tb) if "morphonnx" in f.filename), tb[-1])
            res.status, res.kind = "failure", (f"traceback {type(e).__name__} at "
                                               f"{Path(frame.filename).name}:{frame.lineno} ({frame.name})")
            res.detail = traceback.format_exc()
            code = None
        err = stderr.getvalue().strip().splitlines()
        if code == 2:
            if len(err) == 1:
                res.status, res.kind = "refused", _short(err[0].removeprefix("morphonnx: error: "))
            else:
                res.status, res.kind, res.detail = "failure", "exit 2 with more than one stderr line", "\n".join(err)
        elif code == 1:
            res.status, res.kind = "failure", "exit 1 (check failed)"
            res.detail = stdout.getvalue() + stderr.getvalue()
        elif code == 0:
            why = _independent_check(mpath, kpath, opath)
            if why:
                res.status, res.kind, res.detail = "failure", why.split(":")[0], why
        elif code is not None:
            res.status, res.kind, res.detail = "failure", f"exit {code}", stderr.getvalue()
        if res.status == "failure" and out is not None:
            _save(Path(out) / "failures" / f"{seed}-{case}", mpath, kpath, res, stdout.getvalue(),
                  stderr.getvalue(), seed)
    return res


def _independent_check(mpath: str, kpath: str, opath: str) -> str | None:
    """The written file against the oracle of the same masks, built here; None if it holds."""
    import morphonnx
    from morphonnx.groups import find_groups
    from morphonnx.masks import legalize, masks_from_sources, read_masks_file
    from morphonnx.rewrite import prune
    from morphonnx.verify import check
    if not os.path.isfile(opath):
        return "exit 0 but no file written"
    try:
        onnx.load(opath)
    except Exception as e:  # noqa: BLE001
        return f"written file fails to reopen: {type(e).__name__}: {e}"
    try:
        graph = morphonnx.load(mpath)
        groups = find_groups(graph)
        result = prune(groups, legalize(groups, masks_from_sources(groups, read_masks_file(kpath))))
        c = check(graph, result.oracle, opath)
    except Exception as e:  # noqa: BLE001
        return f"independent check raised: {type(e).__name__}: {e}"
    if not c.ok:
        return f"independent check failed: {c.describe()} {c.notes}"
    return None


def _save(where: Path, mpath: str, kpath: str, res: Outcome, stdout: str, stderr: str, seed: int) -> None:
    where.mkdir(parents=True, exist_ok=True)
    import shutil
    shutil.copy(mpath, where / "model.onnx")
    shutil.copy(kpath, where / "masks.json")
    (where / "report.txt").write_text(
        f"case {res.case} of seed {seed}: {res.kind}\n\nreproduce:\n"
        f"  morphonnx --debug prune {where / 'model.onnx'} --masks {where / 'masks.json'} -o /tmp/pruned.onnx\n"
        f"  python scripts/fuzz.py --case {res.case} --seed {seed}\n\n"
        f"constructs: {' '.join(res.ops)}\n\n{res.detail}\n\nstdout:\n{stdout}\nstderr:\n{stderr}\n")


def summarize(outcomes: list[Outcome], seconds: float) -> str:
    def count(items):
        d: dict[str, int] = {}
        for k in items:
            d[k] = d.get(k, 0) + 1
        return sorted(d.items(), key=lambda kv: -kv[1])
    passed = sum(o.status == "passed" for o in outcomes)
    refused = [o for o in outcomes if o.status == "refused"]
    failed = [o for o in outcomes if o.status == "failure"]
    discards = sum(o.discards for o in outcomes)
    reasons = count(r for o in outcomes for r, n in o.discard_reasons.items() for _ in range(n))
    lines = [f"cases {len(outcomes)}  passed {passed}  refused {len(refused)}  failures {len(failed)}  "
             f"discards {discards}  time {seconds:.1f} s"]
    if refused:
        lines.append("refused, by message:")
        lines += [f"  {n:5d}  {k}" for k, n in count(o.kind for o in refused)]
    if failed:
        lines.append("failures, by class:")
        for k, n in count(o.kind for o in failed):
            ids = [o.case for o in failed if o.kind == k]
            lines.append(f"  {n:5d}  {k}  (cases {', '.join(map(str, ids[:12]))}{' ...' if len(ids) > 12 else ''})")
    if reasons:
        lines.append("discards, by reason: " + ", ".join(f"{k} {n}" for k, n in reasons))
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--case", type=int, action="append", help="run only this case (repeatable)")
    p.add_argument("--out", default="fuzz-out", help="failing cases are saved under OUT/failures/")
    p.add_argument("-v", "--verbose", action="store_true", help="one line per case")
    args = p.parse_args(argv)
    cases = args.case or range(args.cases)
    t0 = time.perf_counter()
    outcomes = []
    for k in cases:
        o = run_case(k, args.seed, args.out)
        outcomes.append(o)
        if args.verbose or o.status == "failure":
            print(f"case {k}: {o.status} {o.kind}", flush=True)
    print(summarize(outcomes, time.perf_counter() - t0))
    return 1 if any(o.status == "failure" for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
