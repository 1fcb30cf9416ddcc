"""Whole training runs on the ``numba_cpu`` kernel set against the reference, and across thread counts.

The oracle is the reference path (``XPCNN_KERNELS=reference``) on the same weights and batches of the
packaged MNIST: after 20 float32 steps every parameter agrees within 1e-5 relative (``|fast - ref| / |ref|``
in the L2 norm of each parameter tensor) and every step's loss within 1e-5 relative.  The norm, not the
largest element: Adam turns float32 rounding noise in a near-zero gradient into a step of ``lr`` (its
update is about ``lr * g / (|g| + eps)``), so single weights drift by more than 1e-5 of the largest one
-- measured here, the float32 *reference* differs that way from a float64 run too (1e-5 to 1e-3 of the
largest weight after 20 steps, versus 3e-7 in the norm).  Longer runs drift apart chaotically and are
compared by accuracy.
1 and 2 worker threads give bitwise the same weights.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("numba", reason="numba is not installed: the numba_cpu kernel set cannot load")

from xpcnn import kernels, models, optim  # noqa: E402
from xpcnn.datasets import load_mnist, standardize, to_float  # noqa: E402
from xpcnn.losses import SoftmaxCrossEntropy  # noqa: E402

BATCH = 32


@pytest.fixture(scope="module")
def mnist():
    ds = load_mnist(download=False, progress=False)
    n = 20 * BATCH
    x, _, _ = standardize(to_float(ds.x_train[:n]))
    return x, ds.y_train[:n].astype(np.int64)


def train(model_name, make_opt, data, steps, mode, workers=None):
    """Weights (NumPy copies by name) and per-step losses after ``steps`` steps in kernel mode ``mode``."""
    from contextlib import nullcontext
    x, y = data
    with kernels.using_kernels(mode):
        import xpcnn.kernels.numba_cpu as nc  # loaded by now in fast mode
        with nc.threads.using_workers(workers) if workers else nullcontext():
            model = models.build(model_name, rng=1)
            model.set_rng(7)  # dropout masks from one seeded stream
            opt = make_opt(model.parameters())
            loss_fn = SoftmaxCrossEntropy()
            losses = []
            for i in range(steps):
                xb, yb = x[i * BATCH:(i + 1) * BATCH], y[i * BATCH:(i + 1) * BATCH]
                losses.append(float(loss_fn.forward(model.forward(xb, train=True), yb)))
                model.backward(loss_fn.backward())
                opt.step()
            if mode == "fast":
                assert kernels.conv2d.implementation(xb, model[0].params["W"], None, (1, 1), (0, 0), (1, 1)) == \
                    "numba_cpu"
    return {k: np.array(v) for k, v in model.state_dict().items()}, np.array(losses)


def assert_weights_close(fast, ref, tol):
    assert fast.keys() == ref.keys()
    for key in ref:
        diff = fast[key].astype(np.float64) - ref[key]
        err = float(np.linalg.norm(diff)) / max(float(np.linalg.norm(ref[key].astype(np.float64))), 1e-30)
        assert err <= tol, f"{key}: relative difference {err:.2e} > {tol:.0e}"


@pytest.mark.parametrize("model_name,make_opt", [
    ("lenet5", lambda p: optim.Adam(p, lr=1e-3)),
    ("wide", lambda p: optim.Momentum(p, lr=0.05, momentum=0.9)),
], ids=["lenet5-adam", "wide-momentum"])
def test_twenty_steps_match_the_reference(mnist, model_name, make_opt):
    fast, fast_losses = train(model_name, make_opt, mnist, 20, "fast")
    ref, ref_losses = train(model_name, make_opt, mnist, 20, "reference")
    assert fast_losses[-1] < fast_losses[0]  # it trains
    np.testing.assert_allclose(fast_losses, ref_losses, rtol=1e-5)
    assert_weights_close(fast, ref, 1e-5)


def test_training_is_bitwise_identical_on_one_and_two_threads(mnist):
    adam = lambda p: optim.Adam(p, lr=1e-3)  # noqa: E731
    one, l1 = train("bn", adam, mnist, 3, "fast", workers=1)
    two, l2 = train("bn", adam, mnist, 3, "fast", workers=2)
    assert l1.tobytes() == l2.tobytes()
    for key in one:
        assert one[key].tobytes() == two[key].tobytes(), key
