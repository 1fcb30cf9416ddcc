"""benchmarks/gpu_verify.py cannot rot: its ``--dry-run`` (NumPy host vs array-api-strict device1) runs here.

Oracles: each stage's recorded status, the parity figures it computes (exact equality expected on
the CPU lanes: the same NumPy arithmetic on both sides), and the merge/rerun logic of its JSON file.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("array_api_strict", reason="the dry run's device is array-api-strict's device1")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_verify.py"


def _load():
    spec = importlib.util.spec_from_file_location("gpu_verify", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_verify"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_dry_run_runs_every_stage_and_reruns_only_what_is_asked(tmp_path, capsys):
    gv = _load()
    out = tmp_path / "gpu_verify.json"
    doc = gv.main(["--dry-run", "--out", str(out)])
    stages = doc["stages"]
    assert list(stages) == list(gv.STAGES)
    has_torch = importlib.util.find_spec("torch") is not None
    for name, record in stages.items():
        if name in ("kernels", "pytest") or (name in ("speed", "profile") and not has_torch):
            assert record["status"] == "skipped", (name, record)
        else:
            assert record["status"] == "ok", (name, record)
    parity = stages["parity"]["result"]
    assert parity["ok"] and parity["ops"]["worst"] == {"float64": 0.0, "float32": 0.0}
    assert len(parity["ops"]["ops"]) == 2 * 11  # 10 layer cases + the loss, in both dtypes
    assert parity["lenet5_steps"]["worst_weight_err"] == 0.0
    assert parity["tf32"]["ok"] and 0 < parity["tf32"]["conv_err_tf32_off"] <= 1e-5  # float32 vs a float64 oracle
    assert json.loads(out.read_text()) == json.loads(json.dumps(gv._jsonable(doc)))  # written after the last stage

    before = json.loads(out.read_text())["stages"]
    rerun = gv.main(["--dry-run", "--out", str(out), "--failed"])["stages"]
    assert rerun["parity"] == before["parity"]  # ok stages are kept as they were
    assert rerun["pytest"]["finished"] >= before["pytest"]["finished"]
    only = gv.main(["--dry-run", "--out", str(out), "--stages", "calls"])["stages"]
    assert only["env"] == before["env"] and only["calls"]["status"] == "ok"
    printed = capsys.readouterr().out
    assert "calls" in printed and "skipped" in printed


def test_unknown_stage_is_a_usage_error(capsys):
    gv = _load()
    with pytest.raises(SystemExit) as info:
        gv.parse_args(["--stages", "env,warp"])
    assert info.value.code == 2 and "warp" in capsys.readouterr().err


def test_budget_skips_stages_with_the_reason(tmp_path):
    gv = _load()
    doc = gv.main(["--dry-run", "--out", str(tmp_path / "g.json"), "--stages", "env,calls", "--budget-s", "0"])
    for record in doc["stages"].values():
        assert record["status"] == "skipped" and "budget" in record["reason"]
