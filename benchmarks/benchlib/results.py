"""The JSON results file: ``{"benchmark", "argv", "args", "machine", ..., "results"}``, written atomically."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .session import Env

__all__ = ["RESULTS_DIR", "jsonable", "output_path", "write_json", "write_results"]

RESULTS_DIR = Path(__file__).resolve().parents[1] / "results"


def output_path(env: Env, name: str) -> Path:
    """``--out``, else ``benchmarks/results/<name>-<backend>-<device-kind>.json``."""
    if env.args.out is not None:
        return Path(env.args.out)
    return RESULTS_DIR / f"{name}-{env.args.backend}-{env.device_kind}.json"


def jsonable(value: Any) -> Any:
    """Dicts, lists, paths, NumPy scalars and non-finite floats (-> None) made JSON-ready."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_results(path: Path, name: str, args: argparse.Namespace | dict[str, Any], machine: dict[str, Any],
                  results: Any, extra: dict[str, Any] | None = None) -> Path:
    """Write one benchmark's JSON document atomically (temporary file, then rename); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arg_dict = args if isinstance(args, dict) else {k: v for k, v in vars(args).items() if not k.startswith("_")}
    doc = {"benchmark": name, "argv": sys.argv, "args": arg_dict, "machine": machine, **(extra or {}),
           "results": results}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(jsonable(doc), indent=1) + "\n")
    os.replace(tmp, path)
    print(f"\nwrote {path}")
    return path


def write_json(env: Env, name: str, results: Any, extra: dict[str, Any] | None = None) -> Path:
    """:func:`write_results` for a run set up by :func:`benchlib.session.setup` (machine and memory methods)."""
    return write_results(output_path(env, name), name, env.args, env.machine_info(), results,
                         {"memory_methods": env.memory_methods(), **(extra or {})})
