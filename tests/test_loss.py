"""Losses: softmax cross-entropy (loss, probabilities, fused gradient) and mean squared error.

NumPy oracles are written from the formulas; gradients are also checked by
central differences (:func:`xpcnn.gradcheck`, float64) and, where PyTorch is
installed, against ``torch.nn.functional.cross_entropy`` with autograd.
"""

from __future__ import annotations

import numpy as np
import pytest

from xpcnn import backend as B
from xpcnn import functional as F
from xpcnn.gradient_check import gradcheck

TOL = {"float32": dict(rtol=2e-5, atol=1e-6), "float64": dict(rtol=1e-12, atol=1e-13)}


def _np_log_softmax(z: np.ndarray) -> np.ndarray:
    return z - np.logaddexp.reduce(z, axis=1, keepdims=True)


def _np_cross_entropy(z: np.ndarray, t: np.ndarray) -> float:
    n = z.shape[0]
    return -float(np.mean(_np_log_softmax(z)[np.arange(n), t]))


def _np_onehot(t: np.ndarray, c: int) -> np.ndarray:
    out = np.zeros((t.shape[0], c))
    for i, k in enumerate(t):
        out[i, k] = 1.0
    return out


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("n,c", [(1, 2), (6, 5), (17, 10)])
def test_cross_entropy_loss_and_probs(backend, rng, dtype, n, c):
    z_host = rng.standard_normal((n, c)) * 3.0
    t_host = rng.integers(0, c, size=n)
    z = B.asarray(z_host, dtype=dtype)
    t = B.asarray(t_host, dtype="int64")
    loss, probs = F.softmax_cross_entropy(z, t)
    assert tuple(loss.shape) == () and loss.dtype == getattr(backend.xp, dtype)
    assert tuple(probs.shape) == (n, c) and probs.dtype == getattr(backend.xp, dtype)
    zh = z_host.astype(dtype).astype(np.float64)
    np.testing.assert_allclose(float(loss), _np_cross_entropy(zh, t_host), **TOL[dtype])
    np.testing.assert_allclose(B.to_numpy(probs), np.exp(_np_log_softmax(zh)), **TOL[dtype])


@pytest.mark.parametrize("label_dtype", ["int32", "int64", "uint8"])
def test_cross_entropy_accepts_integer_label_dtypes(backend, rng, label_dtype):
    z_host = rng.standard_normal((5, 4))
    t_host = np.array([0, 3, 1, 2, 3])
    loss, _ = F.softmax_cross_entropy(B.asarray(z_host, dtype="float64"), B.asarray(t_host, dtype=label_dtype))
    np.testing.assert_allclose(float(loss), _np_cross_entropy(z_host, t_host), rtol=1e-12)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_cross_entropy_fused_gradient_formula(backend, rng, dtype):
    n, c = 7, 4
    z_host = rng.standard_normal((n, c)) * 2.0
    t_host = rng.integers(0, c, size=n)
    t = B.asarray(t_host, dtype="int64")
    _, probs = F.softmax_cross_entropy(B.asarray(z_host, dtype=dtype), t)
    probs_copy = B.to_numpy(probs).copy()
    dz = F.softmax_cross_entropy_backward(probs, t)
    assert tuple(dz.shape) == (n, c) and dz.dtype == getattr(backend.xp, dtype)
    zh = z_host.astype(dtype).astype(np.float64)
    expected = (np.exp(_np_log_softmax(zh)) - _np_onehot(t_host, c)) / n
    np.testing.assert_allclose(B.to_numpy(dz), expected, **TOL[dtype])
    np.testing.assert_array_equal(B.to_numpy(probs), probs_copy)  # probs not modified
    # each row of the gradient sums to zero (softmax and one-hot both sum to 1)
    np.testing.assert_allclose(B.to_numpy(dz).sum(axis=1), 0.0, atol=1e-7 if dtype == "float32" else 1e-15)


def test_cross_entropy_gradcheck(backend, rng):
    n, c = 5, 4
    z = B.asarray(rng.standard_normal((n, c)), dtype="float64")
    t = B.asarray(rng.integers(0, c, size=n), dtype="int64")

    def f(z, t):
        loss, probs = F.softmax_cross_entropy(z, t)
        return loss, lambda dout: (F.softmax_cross_entropy_backward(probs, t) * dout, None)

    result = gradcheck(f, [z, t])
    assert result.ok and set(result.max_abs_error) == {"input 0"}


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_cross_entropy_large_logits_finite(backend, dtype):
    z_host = np.array([[1000.0, -1000.0, 0.0], [-1000.0, 1000.0, 0.0], [0.0, 0.0, 1000.0]])
    t_host = np.array([1, 1, 0])  # first and last rows are confidently wrong
    loss, probs = F.softmax_cross_entropy(B.asarray(z_host, dtype=dtype), B.asarray(t_host, dtype="int64"))
    assert np.isfinite(float(loss))
    np.testing.assert_allclose(float(loss), _np_cross_entropy(z_host, t_host), rtol=1e-6)
    assert np.all(np.isfinite(B.to_numpy(probs)))


def test_cross_entropy_against_torch(rng):
    torch = pytest.importorskip("torch")
    n, c = 9, 6
    z_host = rng.standard_normal((n, c)) * 2.0
    t_host = rng.integers(0, c, size=n)
    with B.using("numpy"):
        loss, probs = F.softmax_cross_entropy(B.asarray(z_host, dtype="float64"), B.asarray(t_host, dtype="int64"))
        dz = B.to_numpy(F.softmax_cross_entropy_backward(probs, B.asarray(t_host, dtype="int64")))
    zt = torch.tensor(z_host, requires_grad=True)
    ref = torch.nn.functional.cross_entropy(zt, torch.tensor(t_host))
    ref.backward()
    np.testing.assert_allclose(float(loss), ref.item(), rtol=1e-12)
    np.testing.assert_allclose(dz, zt.grad.numpy(), rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("bad", [[0, 1, 4], [0, -1, 2], [7, 0, 1]])
def test_labels_out_of_range(backend, rng, bad):
    z = B.asarray(rng.standard_normal((3, 4)), dtype="float64")
    with pytest.raises(ValueError, match=r"\[0, 4\)") as info:
        F.softmax_cross_entropy(z, B.asarray(np.array(bad), dtype="int64"))
    assert str(min(bad)) in str(info.value) and str(max(bad)) in str(info.value)


@pytest.mark.parametrize("label_dtype", ["uint8", "int8", "int16"])
def test_narrow_label_dtypes_with_many_classes(backend, rng, label_dtype):
    """The one-hot must not wrap around in the label dtype (uint8 labels, 300 classes)."""
    info = np.iinfo(label_dtype)
    c = int(info.max) + 45
    t_host = np.array([0, int(info.max), 1, 44 % (int(info.max) + 1)])
    z_host = rng.standard_normal((4, c))
    t = B.asarray(t_host, dtype=label_dtype)
    loss, probs = F.softmax_cross_entropy(B.asarray(z_host, dtype="float64"), t)
    np.testing.assert_allclose(float(loss), _np_cross_entropy(z_host, t_host), rtol=1e-12)
    oh = B.to_numpy(F.one_hot(t, c, backend.xp.float64))
    np.testing.assert_array_equal(oh, _np_onehot(t_host, c))
    dz = B.to_numpy(F.softmax_cross_entropy_backward(probs, t))
    np.testing.assert_allclose(dz, (np.exp(_np_log_softmax(z_host)) - _np_onehot(t_host, c)) / 4, rtol=1e-11,
                               atol=1e-15)


@pytest.mark.parametrize("label_dtype", ["float32", "float64", "bool"])
def test_non_integer_labels(backend, rng, label_dtype):
    z = B.asarray(rng.standard_normal((3, 4)), dtype="float64")
    with pytest.raises(TypeError, match="integer"):
        F.softmax_cross_entropy(z, B.asarray(np.array([0, 1, 1]), dtype=label_dtype))


def test_batch_mismatch(backend, rng):
    z = B.asarray(rng.standard_normal((3, 4)), dtype="float64")
    with pytest.raises(ValueError, match="batch size mismatch") as info:
        F.softmax_cross_entropy(z, B.asarray(np.array([0, 1]), dtype="int64"))
    assert "3" in str(info.value) and "2" in str(info.value)


def test_bad_ranks(backend, rng):
    with pytest.raises(ValueError, match=r"logits must be \(N, C\)"):
        F.softmax_cross_entropy(B.asarray(rng.standard_normal((3, 4, 2)), dtype="float64"),
                                B.asarray(np.zeros(3), dtype="int64"))
    with pytest.raises(ValueError, match="labels"):
        F.softmax_cross_entropy(B.asarray(rng.standard_normal((3, 4)), dtype="float64"),
                                B.asarray(np.zeros((3, 1)), dtype="int64"))


def test_integer_logits_rejected(backend):
    with pytest.raises(TypeError, match="logits"):
        F.softmax_cross_entropy(B.asarray(np.zeros((2, 3)), dtype="int64"), B.asarray(np.zeros(2), dtype="int64"))


def test_one_hot(backend):
    t_host = np.array([2, 0, 3, 3])
    oh = F.one_hot(B.asarray(t_host, dtype="int64"), 5, backend.xp.float32)
    assert tuple(oh.shape) == (4, 5) and oh.dtype == backend.xp.float32
    np.testing.assert_array_equal(B.to_numpy(oh), _np_onehot(t_host, 5))


# --------------------------------------------------------------------------------------------- MSE

@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", [(5, 3), (4, 2, 3, 3), (1, 7)])
def test_mean_squared_error_and_gradient(backend, rng, dtype, shape):
    y_host, t_host = rng.standard_normal(shape), rng.standard_normal(shape)
    y, t = B.asarray(y_host, dtype=dtype), B.asarray(t_host, dtype=dtype)
    e = F.mean_squared_error(y, t)
    assert tuple(e.shape) == () and e.dtype == getattr(backend.xp, dtype)
    yh, th = y_host.astype(dtype).astype(np.float64), t_host.astype(dtype).astype(np.float64)
    n = shape[0]
    expected = sum(0.5 * np.sum((yh[i] - th[i]) ** 2) for i in range(n)) / n
    np.testing.assert_allclose(float(e), expected, **TOL[dtype])
    dy = F.mean_squared_error_backward(y, t)
    assert tuple(dy.shape) == shape and dy.dtype == getattr(backend.xp, dtype)
    np.testing.assert_allclose(B.to_numpy(dy), (yh - th) / n, **TOL[dtype])


def test_mean_squared_error_gradcheck(backend, rng):
    y = B.asarray(rng.standard_normal((4, 3)), dtype="float64")
    t = B.asarray(rng.standard_normal((4, 3)), dtype="float64")

    def f(y, t):
        e = F.mean_squared_error(y, t)
        def backward(dout):
            dy = F.mean_squared_error_backward(y, t) * dout
            return dy, -dy
        return e, backward

    result = gradcheck(f, [y, t])
    assert result.ok and set(result.max_abs_error) == {"input 0", "input 1"}


def test_mean_squared_error_zero_for_equal_inputs(backend, rng):
    y = B.asarray(rng.standard_normal((3, 4)), dtype="float64")
    assert float(F.mean_squared_error(y, y)) == 0.0


def test_mean_squared_error_errors(backend, rng):
    y = B.asarray(rng.standard_normal((3, 4)), dtype="float64")
    with pytest.raises(ValueError, match="same shape"):
        F.mean_squared_error(y, B.asarray(rng.standard_normal((3, 5)), dtype="float64"))
    with pytest.raises(TypeError, match="dtype mismatch"):
        F.mean_squared_error(y, B.asarray(rng.standard_normal((3, 4)), dtype="float32"))
