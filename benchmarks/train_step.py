"""Full training steps (forward, softmax cross-entropy, backward, Adam) of xpcnn vs an identical torch.nn model.

    python benchmarks/train_step.py                       # LeNet-5 and the wide net; plus one LeNet epoch
    python benchmarks/train_step.py --quick               # steps only, few repeats
    python benchmarks/train_step.py --epoch-wide          # also a full epoch of the wide net
    python benchmarks/train_step.py --device cuda --on-device
    python benchmarks/train_step.py --models lenet5,wide,bn --threads 1 --out ...   # the fast-path figures

xpcnn runs in kernel mode ``auto`` (the fast kernel set where one is eligible: ``numba_cpu`` for
NumPy, with Conv->ReLU->MaxPool fused); the same model with the reference kernels
(``XPCNN_KERNELS=reference``) is timed in the same interleaved rounds (``--no-reference`` skips it).
Peak memory: the growth during one more training step after the timed ones (tracemalloc for NumPy,
the profiler's memory events for torch); xpcnn's persistent per-thread scratch buffers (a few MiB)
exist already and are not counted.

The torch model is the xpcnn model's twin (``xpcnn.interop.to_torch``: the *same
initial weights*, conv weights as they are, dense ``W (in, out)`` transposed into
``Linear.weight (out, in)``), trained with ``torch.optim.Adam`` (same lr, betas,
eps) on the *same batches* (real MNIST, standardised).  Steps are interleaved:
xpcnn step i, torch step i, xpcnn step i+1, ... so both see the same machine load.
A timed step includes moving its batch to the device unless ``--on-device`` (then
all batches are resident before timing); it never reads the loss back to the host.

``--epoch`` (default: on, except with --quick; LeNet-5 only, ``--epoch-wide`` adds
the wide net) times one full MNIST epoch (60000 images) for each side, batch by
batch interleaved, with the work of ``xpcnn.train.fit``'s loop: batches from
``xpcnn.datasets.BatchIterator`` (shuffled, the same order for torch), the loss read
back as a float every step and the accuracy counted.

Models with dropout (``bn``) draw different masks on the two sides, so their losses
agree only in distribution, not step by step.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from benchlib import machine, process, tables
from benchlib.data import load_mnist_train
from benchlib.options import make_parser
from benchlib.results import write_json
from benchlib.session import Env, setup
from benchlib.timing import Stats, gc_disabled, ratio
from benchlib.twins import torch_twin

from xpcnn import backend as B
from xpcnn import kernels, models, optim
from xpcnn.datasets import BatchIterator
from xpcnn.losses import SoftmaxCrossEntropy

MODELS = models.MODELS  # the nets are xpcnn's own builders; torch gets a twin of each
ADAM = {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8}


# ---------------------------------------------------------------------------- the two trainers


class XpcnnTrainer:
    """One xpcnn model + Adam; ``kernels`` is the kernel mode its steps run in (``auto``: the fast set)."""

    def __init__(self, name: str, seed: int, kernels_mode: str = "auto") -> None:
        self.model = MODELS[name](rng=seed)
        self.model.set_rng(seed)
        self.opt = optim.Adam(self.model.parameters(), **ADAM)
        self.loss_fn = SoftmaxCrossEntropy()
        self.mode = kernels_mode

    def step(self, xb: Any, yb: Any) -> tuple[Any, Any]:
        with kernels.using_kernels(self.mode):
            out = self.model.forward(xb, train=True)
            loss = self.loss_fn.forward(out, yb)
            self.model.backward(self.loss_fn.backward())
            self.opt.step()
        return loss, out


class TorchTrainer:
    def __init__(self, twin_of: XpcnnTrainer, device: torch.device) -> None:
        self.net = torch_twin(twin_of.model, device)
        self.opt = torch.optim.Adam(self.net.parameters(), **ADAM)

    def step(self, xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.opt.zero_grad(set_to_none=True)
        out = self.net(xb)
        loss = torch.nn.functional.cross_entropy(out, yb)
        loss.backward()
        self.opt.step()
        return loss.detach(), out.detach()


def rel_diff(a: np.ndarray, b: np.ndarray) -> float:
    """Elementwise: ``max |a - b| / |b|`` (for per-step losses)."""
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-12))) if a.size else float("nan")


def scaled_diff(a: np.ndarray, b: np.ndarray) -> float:
    """``max |a - b| / max |b|`` (for arrays whose entries may be near zero, like logits)."""
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-30))


# ---------------------------------------------------------------------------- data


class Feed:
    """The same host batches for both sides, delivered on each side's device (moved inside the step, or before)."""

    def __init__(self, env: Env, x: np.ndarray, y: np.ndarray, order: np.ndarray, n_batches: int,
                 on_device: bool) -> None:
        bs = env.args.batch_size
        self.env, self.on_device = env, on_device
        self.host = [(x[order[i * bs:(i + 1) * bs]], y[order[i * bs:(i + 1) * bs]]) for i in range(n_batches)]
        if on_device:
            self.xdev = [(env.x(a), env.x(b)) for a, b in self.host]
            self.tdev = [(self._t(a), self._t(b)) for a, b in self.host]

    def _t(self, a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a).to(self.env.torch_device)

    def xpcnn(self, i: int) -> tuple[Any, Any]:
        return self.xdev[i] if self.on_device else tuple(self.env.x(a) for a in self.host[i])

    def torch(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.tdev[i] if self.on_device else tuple(self._t(a) for a in self.host[i])


# ---------------------------------------------------------------------------- benchmarks


def bench_steps(env: Env, name: str, x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    args = env.args
    xt = XpcnnTrainer(name, args.seed)
    tt = TorchTrainer(xt, env.torch_device)
    n_steps = args.warmup + args.repeats
    order = np.random.default_rng(args.seed).permutation(x.shape[0])
    if n_steps * args.batch_size > x.shape[0]:
        order = np.concatenate([order] * math.ceil(n_steps * args.batch_size / x.shape[0]))
    feed = Feed(env, x, y, order, n_steps, args.on_device)

    # the twins start equal: compare the logits of the first batch before any update
    xb, _ = feed.xpcnn(0)
    tb, _ = feed.torch(0)
    tt.net.eval()  # eval mode on both sides (batch norm: running statistics; dropout: off)
    with torch.no_grad():
        init_err = scaled_diff(np.asarray(B.to_numpy(xt.model.forward(xb)), np.float64),
                            tt.net(tb).cpu().numpy().astype(np.float64))
    tt.net.train()

    x_losses: list[Any] = []
    t_losses: list[Any] = []
    r_losses: list[Any] = []

    def stepper(trainer: Any, get: Callable[[int], tuple], losses: list[Any]) -> Callable[[], None]:
        def step() -> None:
            losses.append(trainer.step(*get(len(losses)))[0])
        return step

    cands = [env.xcand("xpcnn", stepper(xt, feed.xpcnn, x_losses)),
             env.tcand("torch", stepper(tt, feed.torch, t_losses))]
    rt = XpcnnTrainer(name, args.seed, "reference") if args.reference else None
    if rt is not None:
        cands.append(env.xcand("reference", stepper(rt, feed.xpcnn, r_losses)))
    stats = env.compare(cands, calibrate=False, run_length=args.run_length)
    # peak memory of one more step each (after the warm-up: caches, pools and scratch buffers exist)
    peaks = {"xpcnn": env.x_peak(lambda: xt.step(*feed.xpcnn(0))), "torch": env.t_peak(lambda: tt.step(*feed.torch(0)))}
    if rt is not None:
        peaks["reference"] = env.x_peak(lambda: rt.step(*feed.xpcnn(0)))
    xl = np.array([float(B.to_numpy(v)) for v in x_losses])
    tl = np.array([float(v.item()) for v in t_losses])
    timed = slice(args.warmup, None)
    extra: dict[str, Any] = {}
    if rt is not None:
        rl = np.array([float(B.to_numpy(v)) for v in r_losses])
        extra = {"reference": stats["reference"].as_dict(),
                 "reference_ratio": ratio(stats["reference"], stats["torch"])["median_ratio"],
                 "fast_vs_reference_loss_max_rel_diff_first5": rel_diff(xl[:5], rl[:5])}
    return {
        "model": name, "params": xt.model.num_params(), "on_device": args.on_device,
        "kernels": kernels.active_sets(), "threads": args.threads,
        "xpcnn": stats["xpcnn"].as_dict(), "torch": stats["torch"].as_dict(),
        **ratio(stats["xpcnn"], stats["torch"]), **extra, "peak_bytes": peaks,
        "init_logits_max_rel_err": init_err,
        "loss": {"xpcnn": xl.tolist(), "torch": tl.tolist(), "first_timed_step": args.warmup,
                 "max_rel_diff_timed": rel_diff(xl[timed], tl[timed]),
                 "max_rel_diff_first5": rel_diff(xl[:5], tl[:5])},
    }


def bench_epoch(env: Env, name: str, x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """One epoch each, interleaved batch by batch, with fit()'s per-step work (float(loss), accuracy)."""
    args = env.args
    xt = XpcnnTrainer(name, args.seed)
    tt = TorchTrainer(xt, env.torch_device)
    loader = BatchIterator(x, y, args.batch_size, shuffle=True, rng=args.seed, on_device=args.on_device,
                           backend=env.be)
    order = np.random.default_rng(args.seed).permutation(x.shape[0])  # the loader's first permutation
    dev = env.torch_device
    if args.on_device:
        tx_all, ty_all = torch.from_numpy(x).to(dev), torch.from_numpy(y).to(dev)
        order_t = torch.from_numpy(order).to(dev)
    batches = iter(loader)
    acc = {"xpcnn": [0.0, 0], "torch": [0.0, 0]}  # sum of loss * n, correct
    first_labels: dict[str, np.ndarray] = {}

    def x_step() -> None:
        xb, yb = next(batches)
        loss, out = xt.step(xb, yb)
        xp = env.xp
        n = xb.shape[0]
        acc["xpcnn"][0] += float(loss) * n
        acc["xpcnn"][1] += int(xp.sum(xp.astype(xp.argmax(out, axis=1) == yb, xp.int64)))
        first_labels.setdefault("xpcnn", np.asarray(B.to_numpy(yb)))

    t_pos = [0]

    def t_step() -> None:
        start = t_pos[0]
        stop = min(start + args.batch_size, x.shape[0])
        t_pos[0] = stop
        if args.on_device:
            idx = order_t[start:stop]
            xb, yb = tx_all[idx], ty_all[idx]
        else:
            idx = order[start:stop]
            xb, yb = torch.from_numpy(x[idx]).to(dev), torch.from_numpy(y[idx]).to(dev)
        loss, out = tt.step(xb, yb)
        n = xb.shape[0]
        acc["torch"][0] += loss.item() * n
        acc["torch"][1] += int((out.argmax(dim=1) == yb).sum().item())
        first_labels.setdefault("torch", yb.cpu().numpy())

    times: dict[str, list[float]] = {"xpcnn": [], "torch": []}
    with gc_disabled():
        for i in range(1, len(loader) + 1):
            times["xpcnn"].append(env.x_clock.measure(x_step, 1)[0])
            if i % args.run_length == 0 or i == len(loader):  # torch catches up after each run of xpcnn steps
                for _ in range(len(times["xpcnn"]) - len(times["torch"])):
                    times["torch"].append(env.t_clock.measure(t_step, 1)[0])
            if i % 100 == 0:
                print(f"    {name} epoch: {i}/{len(loader)} batches, xpcnn {sum(times['xpcnn']):.1f} s, "
                      f"torch {sum(times['torch']):.1f} s", flush=True)
    if not np.array_equal(first_labels["xpcnn"], first_labels["torch"]):
        raise RuntimeError("the torch epoch did not see the same batches as xpcnn's BatchIterator")
    n = x.shape[0]
    rec: dict[str, Any] = {"model": name, "images": n, "batches": len(loader), "on_device": args.on_device}
    for side in ("xpcnn", "torch"):
        s = Stats(times[side])
        rec[side] = {"epoch_s": float(sum(times[side])), "step": s.as_dict(),
                     "loss": acc[side][0] / n, "accuracy": acc[side][1] / n}
    rec["ratio"] = rec["xpcnn"]["epoch_s"] / rec["torch"]["epoch_s"]
    return rec


# ---------------------------------------------------------------------------- output


STEP_COLUMNS = [("model", "model"), *tables.TIMING_COLUMNS, ("r", "reference ms"), ("rratio", "reference/torch"),
                ("xmem", "xpcnn MiB"), ("rmem", "reference MiB"), ("tmem", "torch MiB"),
                ("xl", "xpcnn loss first->last"),
                ("tl", "torch loss first->last"), ("d5", "loss rel diff (steps 0-4)"),
                ("dall", "loss rel diff (timed)"), ("init", "init logits diff")]
EPOCH_COLUMNS = [("model", "model"), ("x", "xpcnn s"), ("t", "torch s"), ("ratio", "xpcnn/torch"),
                 ("xs", "xpcnn ms/step (median)"), ("ts", "torch ms/step (median)"),
                 ("xl", "xpcnn loss / acc"), ("tl", "torch loss / acc")]


def step_rows(records: list[dict[str, Any]]) -> list[dict[str, str]]:
    rows = []
    for r in records:
        loss = r["loss"]
        first = loss["first_timed_step"]
        peaks = r.get("peak_bytes", {})
        rows.append({"model": r["model"], **tables.timing_cells(r),
                     "r": tables.fmt_ms(r["reference"]["median"]) if "reference" in r else "-",
                     "rratio": tables.fmt_ratio(r["reference_ratio"]) if "reference" in r else "-",
                     "xmem": tables.fmt_mib(peaks.get("xpcnn")), "rmem": tables.fmt_mib(peaks.get("reference")),
                     "tmem": tables.fmt_mib(peaks.get("torch")),
                     "xl": f"{loss['xpcnn'][first]:.4f} -> {loss['xpcnn'][-1]:.4f}",
                     "tl": f"{loss['torch'][first]:.4f} -> {loss['torch'][-1]:.4f}",
                     "d5": f"{loss['max_rel_diff_first5']:.1e}", "dall": f"{loss['max_rel_diff_timed']:.1e}",
                     "init": f"{r['init_logits_max_rel_err']:.1e}"})
    return rows


def epoch_rows(records: list[dict[str, Any]]) -> list[dict[str, str]]:
    return [{"model": r["model"], "x": f"{r['xpcnn']['epoch_s']:.2f}", "t": f"{r['torch']['epoch_s']:.2f}",
             "ratio": tables.fmt_ratio(r["ratio"]), "xs": tables.fmt_ms(r["xpcnn"]["step"]["median"]),
             "ts": tables.fmt_ms(r["torch"]["step"]["median"]),
             "xl": f"{r['xpcnn']['loss']:.4f} / {r['xpcnn']['accuracy']:.4f}",
             "tl": f"{r['torch']['loss']:.4f} / {r['torch']['accuracy']:.4f}"} for r in records]


def main(argv: list[str] | None = None) -> int:
    parser = make_parser(__doc__, repeats=30, warmup=5, quick_repeats=8, quick_warmup=2)
    parser.add_argument("--models", default="lenet5,wide", help=f"comma-separated, from {sorted(MODELS)}")
    parser.add_argument("--run-length", type=int, default=1,
                        help="consecutive steps per side per turn (default 1: xpcnn, torch, xpcnn, ...)")
    parser.add_argument("--epoch", action=argparse.BooleanOptionalAction, default=None,
                        help="time one full MNIST epoch of LeNet-5 (default: on, off with --quick)")
    parser.add_argument("--epoch-wide", action="store_true", help="also time one full epoch of the wide net")
    parser.add_argument("--reference", action=argparse.BooleanOptionalAction, default=True,
                        help="also time xpcnn with the reference kernels (XPCNN_KERNELS=reference) in the same "
                             "interleaved rounds (default: on)")
    parser.add_argument("--on-device", action="store_true",
                        help="keep the batches on the device before timing (else each step moves its batch)")
    env = setup(parser.parse_args(argv))
    args = env.args
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(names) - set(MODELS))
    if unknown:
        raise SystemExit(f"unknown --models {unknown}; expected some of {sorted(MODELS)}")
    if args.epoch is None:
        args.epoch = not args.quick
    epoch_models = [m for m in names if (m == "lenet5" and args.epoch) or (m == "wide" and args.epoch_wide)]
    print(machine.describe(env), flush=True)
    x, y = load_mnist_train()

    steps = []
    for name in names:
        steps.append(bench_steps(env, name, x, y))
        print(f"  done: {name} steps", flush=True)
    epochs = []
    for name in epoch_models:
        epochs.append(bench_epoch(env, name, x, y))
        print(f"  done: {name} epoch", flush=True)
    print()
    tables.print_table(step_rows(steps), STEP_COLUMNS,
                  title=f"training step (fwd + loss + bwd + Adam), batch {args.batch_size}, "
                        f"{'data on device' if args.on_device else 'batch moved inside the step'}; "
                        f"losses over the timed steps; rel diff = max |xpcnn - torch| / |torch| per step")
    if epochs:
        print()
        tables.print_table(epoch_rows(epochs), EPOCH_COLUMNS,
                      title="one MNIST epoch (60000 images), interleaved batch by batch; loss / acc: epoch means")
    write_json(env, "train_step", {"steps": steps, "epochs": epochs},
                 extra={"optimizer": {"type": "Adam", **ADAM}, "loss": "softmax cross-entropy (mean)"})
    return 0


if __name__ == "__main__":
    process.relaunch_with_thread_env()
    raise SystemExit(main())
