"""Test accuracy of the `xpcnn train` recipes, measured end to end (the README's accuracy table).

Runs ``python -m xpcnn train`` for each configuration (in parallel with ``--jobs``, each job on
``--threads`` BLAS threads), then reads every run directory's ``metrics.json`` and prints a table
(model, dataset, epochs, test accuracy, target, wall time) and writes
``benchmarks/results/accuracy-<backend>.json``.

    python benchmarks/accuracy.py                      # all three, 2 jobs x 1 thread
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
FASHION = BENCH_DIR.parent.parent / "shared" / "data" / "fashion-mnist"

#: configuration name -> (model, dataset); each is trained with its recipe in xpcnn.recipes.RECIPES
CONFIGS = {"lenet5": ("lenet5", "mnist"), "simple": ("simple", "mnist"), "bn": ("bn", "fashion-mnist")}
#: the issue's targets for the test accuracy
TARGETS = {("lenet5", "mnist"): 0.992, ("simple", "mnist"): 0.989, ("bn", "fashion-mnist"): 0.920}


def run_one(name: str, out_root: Path, threads: int, backend: str, data_dir: str | None) -> Path:
    model, dataset = CONFIGS[name]
    out = out_root / name
    cmd = [sys.executable, "-m", "xpcnn", "train", "--model", model, "--dataset", dataset, "--out", str(out), "--no-progress", "--backend", backend]
    if dataset == "fashion-mnist" and data_dir:
        cmd += ["--data-dir", data_dir]
    env = {**os.environ, "OPENBLAS_NUM_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}
    with open(out_root / f"{name}.log", "w") as log:
        subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, check=True)
    return out


def summarize(run_dirs: list[Path]) -> list[dict]:
    rows = []
    for d in run_dirs:
        m = json.loads((d / "metrics.json").read_text())
        target = TARGETS.get((m["model"], m["dataset"]))
        rows.append({"run": str(d), "model": m["model"], "dataset": m["dataset"], "backend": m["backend"],
                     "epochs": len(m["epochs"]), "recipe": m["recipe"], "seed": m["seed"],
                     "test_accuracy": m["test_accuracy"], "target": target,
                     "train_time_s": m["train_time_s"],
                     "best_epoch_accuracy": max(e.get("val_accuracy", 0.0) for e in m["epochs"])})
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", default=",".join(CONFIGS), help=f"comma list of {', '.join(CONFIGS)}")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="BLAS threads per job")
    p.add_argument("--backend", default="numpy")
    p.add_argument("--out", default="runs/accuracy", help="root of the run directories")
    p.add_argument("--fashion-dir", default=str(FASHION) if FASHION.is_dir() else None,
                   help="Fashion-MNIST directory (default: the lookup order of xpcnn.datasets)")
    p.add_argument("--summarize", nargs="+", type=Path, help="only tabulate these existing run directories")
    args = p.parse_args()

    if args.summarize:
        run_dirs = args.summarize
    else:
        out_root = Path(args.out)
        out_root.mkdir(parents=True, exist_ok=True)
        names = [n.strip() for n in args.configs.split(",") if n.strip()]
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            run_dirs = list(pool.map(lambda n: run_one(n, out_root, args.threads, args.backend, args.fashion_dir),
                                     names))
    rows = summarize(run_dirs)
    header = f"{'model':8} {'dataset':14} {'epochs':>6} {'test acc':>9} {'target':>7} {'met':>4} {'train time':>11}"
    print(header)
    print("-" * len(header))
    for r in rows:
        met = "" if r["target"] is None else ("yes" if r["test_accuracy"] >= r["target"] else "NO")
        target = "" if r["target"] is None else f"{r['target']:.3f}"
        print(f"{r['model']:8} {r['dataset']:14} {r['epochs']:>6} {r['test_accuracy']:>9.4f} {target:>7} {met:>4} "
              f"{r['train_time_s'] / 60:>9.1f} min")
    backend = rows[0]["backend"].split(":")[0] if rows else args.backend
    result = {"benchmark": "accuracy", "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": sys.version.split()[0]},
              "threads_per_job": args.threads, "runs": rows}
    path = BENCH_DIR / "results" / f"accuracy-{backend}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
