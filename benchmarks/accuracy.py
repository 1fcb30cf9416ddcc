"""Test accuracy of the `xpcnn train` recipes, measured end to end (the README's accuracy table).

Runs ``python -m xpcnn train --model M`` for each configuration with its recipe in
``xpcnn.recipes.RECIPES`` (in parallel with ``--jobs``, each job on ``--threads`` BLAS threads), in a
fresh output root per invocation (``<--out>/<UTC time>-<pid>/<config>``), then reads every run's
``metrics.json`` and prints a table and writes ``benchmarks/results/accuracy-<backend>.json``.

The figure is the **last epoch's test accuracy**: the recipe holds out ``val_split`` of the training
set for per-epoch validation, and the test set is evaluated once, after the last epoch; nothing is
selected on it.  The commit the runs were made at is recorded.

    python benchmarks/accuracy.py                      # lenet5, simple, bn: 2 jobs x 1 thread
    python benchmarks/accuracy.py --configs lenet5     # one
    python benchmarks/accuracy.py --summarize runs/a runs/b   # tabulate existing run directories

Nothing here asserts: a result below its target is printed as such.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
sys.path.insert(0, str(REPO))

from xpcnn.recipes import RECIPES  # noqa: E402  (the checkout's package, not an installed one)

FASHION = REPO.parent / "shared" / "data" / "fashion-mnist"  # the checkout's sibling ../shared/data

#: the configurations measured by default (each trained with RECIPES[name] on RECIPES[name].dataset)
CONFIGS = ("lenet5", "simple", "bn")
#: the issue's targets for the test accuracy
TARGETS = {("lenet5", "mnist"): 0.992, ("simple", "mnist"): 0.989, ("bn", "fashion-mnist"): 0.920,
           ("resnet8", "fashion-mnist"): 0.935, ("resnet20", "fashion-mnist"): 0.935, ("bn-mnist", "mnist"): 0.995}


def commit() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no", "xpcnn"],
                               capture_output=True, text=True, check=True).stdout.strip()
        return out + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def fresh_root(base: Path) -> Path:
    """``base/<UTC time>-<pid>``, created here (never an earlier invocation's directory)."""
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    root = base / f"{stamp}-{os.getpid()}"
    root.mkdir(parents=True, exist_ok=False)
    return root


def run_one(name: str, out_root: Path, threads: int, backend: str, data_dir: str | None, seed: int) -> Path:
    dataset = RECIPES[name].dataset
    out = out_root / name
    cmd = [sys.executable, "-m", "xpcnn", "train", "--model", name, "--dataset", dataset, "--seed", str(seed),
           "--out", str(out), "--no-progress", "--backend", backend]
    if dataset == "fashion-mnist" and data_dir:
        cmd += ["--data-dir", data_dir]
    env = {**os.environ, "OPENBLAS_NUM_THREADS": str(threads), "OMP_NUM_THREADS": str(threads),
           "MKL_NUM_THREADS": str(threads), "PYTHONPATH": str(REPO)}
    with open(out_root / f"{name}.log", "w") as log:
        subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, check=True, cwd=REPO)
    return out


def summarize(run_dirs: list[Path]) -> list[dict]:
    rows = []
    for d in run_dirs:
        m = json.loads((d / "metrics.json").read_text())
        last = m["epochs"][-1]
        rows.append({"run": str(d), "model": m["model"], "dataset": m["dataset"], "backend": m["backend"],
                     "epochs": len(m["epochs"]), "recipe": m["recipe"], "seed": m["seed"],
                     "val_split": m.get("val_split"), "train_samples": m["train_samples"],
                     "val_samples": m.get("val_samples"), "test_samples": m.get("test_samples"),
                     "last_epoch_val_accuracy": last.get("val_accuracy"),
                     "test_accuracy": m["test_accuracy"], "evaluated_epoch": m.get("evaluated_epoch"),
                     "target": TARGETS.get((m["model"], m["dataset"])), "train_time_s": m["train_time_s"]})
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", default=",".join(CONFIGS), help=f"comma list of {', '.join(RECIPES)}")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="BLAS threads per job")
    p.add_argument("--backend", default="numpy")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/accuracy", help="base of the fresh output root of this invocation")
    p.add_argument("--fashion-dir", default=str(FASHION) if FASHION.is_dir() else None,
                   help="Fashion-MNIST directory (default: the lookup order of xpcnn.datasets)")
    p.add_argument("--summarize", nargs="+", type=Path, help="only tabulate these existing run directories")
    args = p.parse_args()

    if args.summarize:
        run_dirs = args.summarize
    else:
        names = [n.strip() for n in args.configs.split(",") if n.strip()]
        unknown = [n for n in names if n not in RECIPES]
        if unknown:
            p.error(f"unknown configs {unknown}; expected names from {sorted(RECIPES)}")
        out_root = fresh_root(Path(args.out))
        print(f"run directories under {out_root}")
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            run_dirs = list(pool.map(lambda n: run_one(n, out_root, args.threads, args.backend, args.fashion_dir,
                                                       args.seed), names))
    rows = summarize(run_dirs)
    header = (f"{'model':8} {'dataset':14} {'epochs':>6} {'train/val':>12} {'test acc (last epoch)':>22} "
              f"{'target':>7} {'met':>4} {'train time':>11}")
    print(header)
    print("-" * len(header))
    for r in rows:
        met = "" if r["target"] is None else ("yes" if r["test_accuracy"] >= r["target"] else "NO")
        target = "" if r["target"] is None else f"{r['target']:.3f}"
        split = f"{r['train_samples']}/{r['val_samples']}"
        print(f"{r['model']:8} {r['dataset']:14} {r['epochs']:>6} {split:>12} {r['test_accuracy']:>22.4f} "
              f"{target:>7} {met:>4} {r['train_time_s'] / 60:>9.1f} min")
    backend = rows[0]["backend"].split(":")[0] if rows else args.backend
    result = {"benchmark": "accuracy", "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "commit": commit(), "figure": "test accuracy after the last epoch (seed fixed, no selection on test)",
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": sys.version.split()[0]},
              "threads_per_job": args.threads, "runs": rows}
    path = BENCH_DIR / "results" / f"accuracy-{backend}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
