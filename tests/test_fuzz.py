"""The random-graph fuzzer (scripts/fuzz.py) on fixed seeds: DESIGN.md's contract through the
command line, on random valid models of every construct and random masks (dead groups included).

A failure names its case: `python scripts/fuzz.py --seed 0 --case N --out DIR` saves the model and
masks under DIR/failures/ for reproduction.
"""
from __future__ import annotations


from conftest import _load_script

fuzz = _load_script("fuzz")

SEED, CASES = 0, 200
CONSTRUCTS = {"Conv:plain", "Conv:depthwise", "Conv:grouped", "BatchNormalization", "Relu", "Sigmoid", "HardSwish",
              "Add", "Mul", "SE", "Concat", "Split", "Slice", "Gemm", "Flatten", "Reshape", "Transpose", "MaxPool",
              "AveragePool", "GlobalAveragePool", "ReduceMean", "Resize", "Pad", "If"}


def test_generated_models_are_valid_and_cover_every_construct():
    seen = set()
    for case in range(40):
        model, discards, _, ops = fuzz.random_model(fuzz.case_seed(SEED, case))
        assert fuzz.validate(model) is None
        seen.update(ops)
    assert CONSTRUCTS <= seen, f"never generated: {sorted(CONSTRUCTS - seen)}"


def test_random_graphs_keep_the_contract(tmp_path):
    outcomes = [fuzz.run_case(case, SEED, tmp_path) for case in range(CASES)]
    failures = [o for o in outcomes if o.status == "failure"]
    assert not failures, "\n".join(
        f"case {o.case} (seed {SEED}): {o.kind} -- reproduce: python scripts/fuzz.py --seed {SEED} --case {o.case}"
        for o in failures) + "\n" + fuzz.summarize(outcomes, 0.0)
    assert sum(o.status == "passed" for o in outcomes) >= CASES // 2  # most cases prune, not refuse
