"""The announced fallbacks of the ``numba_cpu`` kernel set, each in a fresh interpreter.

* Numba missing (or failing to import): one RuntimeWarning names the set and the reason, every op runs
  the reference, ``active_sets()`` says ``failed``; ``XPCNN_KERNELS=fast`` refuses with a KernelError.
* No writable cache directory: Numba would raise at decoration time; the set warns and compiles without
  the on-disk cache, and its results still match the reference.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: a conv + max pool on NumPy arrays through the seam, compared with the reference functions directly
PROBE = textwrap.dedent("""
    import json, warnings
    import numpy as np
    from xpcnn import kernels
    from xpcnn.functional.conv import _conv2d_forward
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 2, 6, 6)).astype(np.float32)
    W = rng.standard_normal((4, 2, 3, 3)).astype(np.float32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        impl = kernels.conv2d.implementation(x, W, None, (1, 1), (1, 1), (1, 1))
        y, _ = kernels.conv2d.forward(x, W, None, (1, 1), (1, 1), (1, 1))
    ref, _ = _conv2d_forward(x, W, None, (1, 1), (1, 1), (1, 1))
    err = float(np.max(np.abs(y - ref)) / np.max(np.abs(ref)))
    print(json.dumps({"impl": impl, "err": err, "sets": kernels.active_sets(),
                      "warnings": [str(w.message) for w in caught]}))
""")


def run(prelude: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), **(env or {})}
    full_env.pop("XPCNN_KERNELS", None)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-c", prelude + PROBE], capture_output=True, text=True, env=full_env,
                          cwd=ROOT, timeout=300)


BLOCK_NUMBA = "import sys\nsys.modules['numba'] = None  # import numba now raises ImportError\n"


def test_missing_numba_falls_back_to_the_reference_with_a_warning():
    proc = run(BLOCK_NUMBA)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["impl"] == "reference"
    assert out["err"] == 0.0  # it *is* the reference
    assert out["sets"]["numba_cpu"].startswith("failed: ImportError")
    assert any("numba_cpu" in w and "using the reference kernels" in w for w in out["warnings"]), out["warnings"]


def test_missing_numba_with_fast_forced_is_an_error():
    proc = run(BLOCK_NUMBA, {"XPCNN_KERNELS": "fast"})
    assert proc.returncode != 0
    assert "KernelError" in proc.stderr and "numba_cpu" in proc.stderr and "could not load" in proc.stderr


def test_missing_numba_with_reference_forced_is_silent():
    proc = run(BLOCK_NUMBA, {"XPCNN_KERNELS": "reference"})
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["impl"] == "reference" and out["warnings"] == []
    assert out["sets"]["numba_cpu"] == "not loaded yet"  # the reference mode never imports the set


NO_CACHE_LOCATOR = textwrap.dedent("""
    import numba.core.caching as caching
    impl = getattr(caching, "CacheImpl", None) or getattr(caching, "_CacheImpl")
    impl._locator_classes = []  # as on a read-only install with no writable user cache: nothing can cache
""")


def test_no_writable_cache_compiles_without_it_and_warns():
    pytest.importorskip("numba", reason="numba is not installed: nothing to cache")
    proc = run(NO_CACHE_LOCATOR)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["impl"] == "numba_cpu"
    assert out["err"] <= 1e-5
    assert out["sets"]["numba_cpu"] == "loaded"
    assert any("no writable cache directory" in w for w in out["warnings"]), out["warnings"]
