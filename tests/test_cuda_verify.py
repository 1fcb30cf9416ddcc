"""The GPU verification stage, run dry on the CPU (CuPy stand-in, kernels through the shim) so it cannot rot.

On a GPU, benchmarks/gpu_verify.py runs the same function with CuPy; there the timings mean something.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from xpcnn.kernels.cuda import cupy_set, shim, verify
from xpcnn.kernels.cuda.standin import StandIn

pytestmark = pytest.mark.skipif(shim.compiler() is None, reason="no host C++ compiler (g++) for the CUDA CPU shim")

EXPECTED = {"conv2d", "relu+max_pool2d", "conv+relu+max_pool2d fused", "dense", "softmax_cross_entropy",
            *(f"optimizer:{r}" for r in ("sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "adamw"))}


def test_dry_run_passes_every_case_with_timings() -> None:
    result = verify.run(StandIn(), batch=4, repeats=1)
    assert set(result["cases"]) == EXPECTED
    assert result["ok"], {k: v for k, v in result["cases"].items() if not v["ok"]}
    for entry in result["cases"].values():
        assert entry["cuda_us"] > 0 and entry["reference_us"] > 0


def test_an_output_left_unwritten_stays_nan_and_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    original = cupy_set._relu_forward

    def forgetful(k: Any, x: Any) -> Any:  # allocates like the real one, writes nothing
        y = k.cp.empty(x.shape, dtype=np.float32)
        original(k, x)
        return y, y

    monkeypatch.setattr(cupy_set, "_relu_forward", forgetful)
    result = verify.run(StandIn(), batch=4, repeats=1)
    assert not result["cases"]["relu+max_pool2d"]["ok"] and not result["ok"]
    assert result["cases"]["dense"]["ok"]
