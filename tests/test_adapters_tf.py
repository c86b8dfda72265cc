"""The TensorFlow/Keras adapter: a few training steps with the penalty lower it, and the
learned masks prune the tf2onnx export within the contract (tests/tf_flow.py, in its own
process: tensorflow and torch cannot share one)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_keras_flow(tmp_path):
    r = subprocess.run([sys.executable, str(Path(__file__).parent / "tf_flow.py"), str(tmp_path)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and "tf flow ok" in r.stdout, r.stderr[-3000:]
