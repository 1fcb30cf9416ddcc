"""The backend switch: spec parsing, precedence, context restore, fail-loud errors, transfers, host RNG."""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest
from conftest import cuda_present

from xpcnn import backend as B
from xpcnn import functional as F


@pytest.fixture
def clean_switch(monkeypatch):
    """No explicit backend, no env var, fresh env cache; everything restored afterwards."""
    token = B._explicit.set(None)
    monkeypatch.delenv(B.ENV_VAR, raising=False)
    B._env_spec.cache_clear()
    yield monkeypatch
    B._explicit.reset(token)
    B._env_spec.cache_clear()  # the next reader sees the real environment (monkeypatch restores it later)


# ------------------------------------------------------------------------------------------ parsing

@pytest.mark.parametrize("spec,expected", [
    ("numpy", ("numpy", None)),
    ("cupy", ("cupy", None)),
    ("cupy:1", ("cupy", "1")),
    ("torch", ("torch", None)),
    ("torch:cuda:0", ("torch", "cuda:0")),
    ("torch:cpu", ("torch", "cpu")),
    ("array_api_strict", ("array_api_strict", None)),
    ("array-api-strict", ("array_api_strict", None)),
    ("  NumPy  ", ("numpy", None)),
    ("numpy:cpu", ("numpy", "cpu")),
])
def test_parse_spec(spec, expected):
    assert B.parse_spec(spec) == expected


@pytest.mark.parametrize("spec", ["jax", "tensorflow", "nunpy", "cuda:0"])
def test_parse_spec_unknown_lists_choices(spec):
    with pytest.raises(B.BackendError) as info:
        B.parse_spec(spec)
    message = str(info.value)
    assert repr(spec.split(":")[0]) in message
    for name in ("numpy", "cupy", "torch", "array_api_strict"):
        assert name in message


@pytest.mark.parametrize("spec", ["", "   ", None, 3])
def test_parse_spec_empty_or_not_a_string(spec):
    with pytest.raises(B.BackendError, match="non-empty string"):
        B.parse_spec(spec)


@pytest.mark.parametrize("spec", ["numpy:1", "array_api_strict:cuda:0"])
def test_parse_spec_cpu_only_backends_reject_devices(spec):
    with pytest.raises(B.BackendError, match="only has a CPU device"):
        B.parse_spec(spec)


@pytest.mark.parametrize("spec", ["cupy:abc", "cupy:cuda:0", "cupy:-1", "cupy:1.5"])
def test_parse_spec_cupy_needs_an_integer_device(spec):
    with pytest.raises(B.BackendError, match="integer device index"):
        B.parse_spec(spec)


# --------------------------------------------------------------------------------------- precedence

def test_default_is_numpy(clean_switch):
    be = B.get_backend()
    assert be.name == "numpy" and be.spec == "numpy"
    assert be.xp.asarray([1.0]).__class__ is np.ndarray


def test_env_var_is_used_and_read_once(clean_switch):
    clean_switch.setenv(B.ENV_VAR, "array_api_strict")
    B._env_spec.cache_clear()
    assert B.get_backend().name == "array_api_strict"
    clean_switch.setenv(B.ENV_VAR, "numpy")  # read once: a later change is not seen ...
    assert B.get_backend().name == "array_api_strict"
    B._env_spec.cache_clear()  # ... until the cache is cleared
    assert B.get_backend().name == "numpy"


def test_explicit_beats_env_beats_default(clean_switch):
    clean_switch.setenv(B.ENV_VAR, "array_api_strict")
    B._env_spec.cache_clear()
    assert B.get_backend().name == "array_api_strict"
    with B.using("numpy") as be:
        assert be.name == "numpy" and B.get_backend().name == "numpy"
    assert B.get_backend().name == "array_api_strict"
    assert B.set_backend("numpy").name == "numpy"
    assert B.get_backend().name == "numpy"
    assert B.set_backend(None).name == "array_api_strict"  # back to the env var
    assert B.get_backend().name == "array_api_strict"


def test_bad_env_value_fails_loudly_naming_the_source(clean_switch):
    clean_switch.setenv(B.ENV_VAR, "tensorflow")
    B._env_spec.cache_clear()
    with pytest.raises(B.BackendError) as info:
        B.get_backend()
    assert "tensorflow" in str(info.value) and f"${B.ENV_VAR}" in str(info.value)


def test_blank_env_value_means_default(clean_switch):
    clean_switch.setenv(B.ENV_VAR, "   ")
    B._env_spec.cache_clear()
    assert B.get_backend().name == "numpy"


def test_set_backend_validates_before_switching(clean_switch):
    B.set_backend("array_api_strict")
    with pytest.raises(B.BackendError):
        B.set_backend("jax")
    assert B.get_backend().name == "array_api_strict"
    with pytest.raises(B.BackendError):
        with B.using("jax"):
            pass  # pragma: no cover
    assert B.get_backend().name == "array_api_strict"


def test_using_restores_on_exception_and_nests(clean_switch):
    assert B.get_backend().name == "numpy"
    with pytest.raises(ZeroDivisionError):
        with B.using("array_api_strict"):
            assert B.get_backend().name == "array_api_strict"
            1 / 0
    assert B.get_backend().name == "numpy"
    with B.using("array_api_strict"):
        with B.using("numpy"):
            assert B.get_backend().name == "numpy"
        assert B.get_backend().name == "array_api_strict"
        with pytest.raises(KeyError):
            with B.using("numpy"):
                raise KeyError("x")
        assert B.get_backend().name == "array_api_strict"
    assert B.get_backend().name == "numpy"


def test_using_accepts_a_backend_object(clean_switch):
    strict = B.resolve("array_api_strict")
    with B.using(strict) as be:
        assert be is strict and B.get_backend() is strict


def test_environ_never_mutated(clean_switch, rng):
    snapshot = dict(os.environ)
    B.get_backend()
    B.set_backend("array_api_strict")
    with B.using("numpy"):
        B.asarray(rng.standard_normal(3), dtype="float32")
    B.set_backend(None)
    B.available_backends()
    try:
        B.set_backend("jax")
    except B.BackendError:
        pass
    assert dict(os.environ) == snapshot
    assert B.ENV_VAR not in os.environ


# ------------------------------------------------------------------------------- fail loud on cupy

@pytest.mark.skipif(cuda_present(), reason="CuPy and a CUDA device are present: the no-GPU error cannot occur")
def test_cupy_without_gpu_raises_with_install_hint(clean_switch):
    for spec in ("cupy", "cupy:0", "cupy:1"):
        with pytest.raises(B.BackendError) as info:
            B.set_backend(spec)
        message = str(info.value)
        assert "cupy" in message.lower() and "pip install" in message and "xpcnn[cuda12]" in message
    assert B.get_backend().name == "numpy"  # no silent switch, no fallback
    clean_switch.setenv(B.ENV_VAR, "cupy")
    B._env_spec.cache_clear()
    with pytest.raises(B.BackendError, match=r"pip install .*\$XPCNN_BACKEND"):
        B.get_backend()
    assert "cupy" not in B.available_backends()


class _FakeCupyNoDevice:
    """Stands in for an installed CuPy on a machine without a usable CUDA driver."""

    class cuda:  # noqa: N801 - mirrors cupy.cuda
        class runtime:  # noqa: N801
            @staticmethod
            def getDeviceCount():
                raise RuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected")


class _FakeCupyOneDevice:
    class cuda:  # noqa: N801
        class runtime:  # noqa: N801
            @staticmethod
            def getDeviceCount():
                return 1


def test_cupy_installed_but_no_device_raises(clean_switch):
    clean_switch.setitem(__import__("sys").modules, "cupy", _FakeCupyNoDevice)
    with pytest.raises(B.BackendError) as info:
        B.resolve.__wrapped__("cupy")  # bypass the cache (a real CuPy may already be resolved on a GPU box)
    message = str(info.value)
    assert "needs a CUDA GPU" in message and "cudaErrorNoDevice" in message and "xpcnn[cuda12]" in message


def test_cupy_device_index_out_of_range(clean_switch):
    clean_switch.setitem(__import__("sys").modules, "cupy", _FakeCupyOneDevice)
    with pytest.raises(B.BackendError, match=r"CUDA device 3 requested, but 1 device\(s\) are visible"):
        B.resolve.__wrapped__("cupy:3")


def test_torch_cuda_without_cuda_raises(clean_switch):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the error cannot occur")
    with pytest.raises(B.BackendError, match="cuda:0"):
        B.set_backend("torch:cuda:0")
    assert B.get_backend().name == "numpy"


def test_available_backends_lists_what_loads():
    names = B.available_backends()
    assert names[0] == "numpy"
    assert ("array_api_strict" in names) == (importlib.util.find_spec("array_api_strict") is not None)
    assert ("torch" in names) == (importlib.util.find_spec("torch") is not None)
    assert ("cupy" in names) == cuda_present()


# ----------------------------------------------------------------------------------------- transfers

DTYPES = ["float32", "float64", "int32", "int64", "bool"]


@pytest.mark.parametrize("dtype", DTYPES)
def test_asarray_to_numpy_round_trip(backend, rng, dtype):
    host = rng.standard_normal((3, 4)) * 10
    x = B.asarray(host, dtype=dtype)
    assert x.dtype == getattr(backend.xp, dtype)
    assert tuple(x.shape) == (3, 4)
    assert B.backend_name(x) == backend.name
    back = B.to_numpy(x)
    assert isinstance(back, np.ndarray) and back.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(back, host.astype(dtype))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_asarray_dtype_spellings(backend, rng, dtype):
    host = rng.standard_normal(5)
    for spelling in (dtype, np.dtype(dtype), getattr(backend.xp, dtype)):
        x = B.asarray(host, dtype=spelling)
        assert x.dtype == getattr(backend.xp, dtype), spelling
    assert B.asarray(host.astype(np.float32)).dtype == backend.xp.float32  # None keeps the host dtype
    assert B.dtype(dtype, backend.xp) == getattr(backend.xp, dtype)
    with pytest.raises(TypeError, match="does not exist"):
        B.dtype("float128x", backend.xp)


def test_asarray_copies(backend, rng):
    host = rng.standard_normal(4)
    x = B.asarray(host, dtype="float64")
    original = host.copy()
    host[...] = 0.0
    np.testing.assert_array_equal(B.to_numpy(x), original)


def test_asarray_explicit_backend_argument(backend, rng):
    host = rng.standard_normal(3)
    x = B.asarray(host, dtype="float32", backend="numpy")
    assert isinstance(x, np.ndarray) and x.dtype == np.float32
    y = B.asarray(host, dtype="float32", backend=backend)
    assert B.backend_name(y) == backend.name


# ------------------------------------------------------------------------- DLPack: sharing without copies

def _host_visible(backend) -> bool:
    """Whether the lane's arrays live in host memory (then DLPack can share them with NumPy)."""
    return backend.name != "cupy" and "cuda" not in str(backend.device)


def test_asarray_copy_none_shares_host_memory_where_the_backend_can(backend, rng):
    host = rng.standard_normal(4)
    x = B.asarray(host, copy=None)
    assert B.backend_name(x) == backend.name and x.dtype == backend.xp.float64
    host[0] = 123.0  # a write through the NumPy array shows in x only if they share memory
    assert (float(B.to_numpy(x)[0]) == 123.0) == _host_visible(backend)
    fresh = B.asarray(host)  # the default still copies
    host[1] = -7.0
    assert float(B.to_numpy(fresh)[1]) != -7.0


def test_asarray_copy_false_shares_or_says_why(backend, rng):
    host = rng.standard_normal(3)
    if _host_visible(backend):
        x = B.asarray(host, copy=False)
        host[2] = 9.0
        assert float(B.to_numpy(x)[2]) == 9.0
    else:
        with pytest.raises(ValueError, match="without a copy"):
            B.asarray(host, copy=False)
    with pytest.raises(ValueError, match=r"float64 array on cpu cannot become float32 .*the dtype differs"):
        B.asarray(host, dtype="float32", copy=False)
    with pytest.raises(ValueError, match="list is not an array that supports DLPack"):
        B.asarray([1.0, 2.0], copy=False)
    assert B.to_numpy(B.asarray([1.0, 2.0], copy=None)).tolist() == [1.0, 2.0]  # None copies when it must


def test_to_numpy_views_host_arrays_and_copy_true_does_not(backend, rng):
    x = B.asarray(rng.standard_normal(3))
    view = B.to_numpy(x)
    view[0] = 42.0
    assert (float(B.to_numpy(x, copy=True)[0]) == 42.0) == _host_visible(backend)
    independent = B.to_numpy(x, copy=True)
    independent[1] = -1.0
    assert float(B.to_numpy(x)[1]) != -1.0
    if not _host_visible(backend):
        with pytest.raises(ValueError, match="without a copy"):
            B.to_numpy(x, copy=False)


def test_read_only_numpy_is_copied_for_torch_never_exported():
    torch = pytest.importorskip("torch", reason="NumPy <-> torch sharing needs torch")
    host = np.arange(3.0)
    host.flags.writeable = False
    t = B.asarray(host, backend="torch", copy=None)
    assert isinstance(t, torch.Tensor) and t.tolist() == [0.0, 1.0, 2.0]
    t[0] = 5.0  # a private copy: the read-only array is untouched
    assert host[0] == 0.0
    with pytest.raises(ValueError, match="read-only"):
        B.asarray(host, backend="torch", copy=False)


def test_torch_tensors_that_record_gradients_cross_without_copies():
    torch = pytest.importorskip("torch", reason="NumPy <-> torch sharing needs torch")
    t = torch.zeros(3, requires_grad=True)
    view = B.to_numpy(t)
    shared = B.asarray(t, backend="numpy", copy=None)
    with torch.no_grad():
        t[1] = 4.0
    assert view[1] == 4.0 and shared[1] == 4.0
    back = B.asarray(view, backend="torch", copy=None)
    view[2] = 8.0
    assert float(back[2]) == 8.0


def test_to_device_like(backend, rng):
    like = B.asarray(np.zeros(2), dtype="float32")
    host = rng.standard_normal((2, 3))
    x = B.to_device_like(host, like)
    assert x.dtype == backend.xp.float32 and B.backend_name(x) == backend.name
    np.testing.assert_array_equal(B.to_numpy(x), host.astype(np.float32))
    # same dtype as ``like``: still a copy, never a view of the host array
    like64 = B.asarray(np.zeros(2), dtype="float64")
    y = B.to_device_like(host, like64)
    original = host.copy()
    host[...] = -1.0
    np.testing.assert_array_equal(B.to_numpy(y), original)


def test_backend_object(backend):
    assert str(backend) == backend.spec
    assert B.get_backend() == backend
    x = backend.xp.zeros((2,), dtype=backend.xp.float32, device=backend.device)
    assert B.backend_name(x) == backend.name


def test_mixing_backends_in_a_functional_op_raises(backend, rng):
    others = [name for name in B.available_backends() if name != backend.name]
    assert others  # numpy is always there, and this lane is another one or numpy itself with strict/torch
    x = B.asarray(rng.standard_normal((2, 3)), dtype="float64")
    for other in others:
        W = B.asarray(rng.standard_normal((3, 4)), dtype="float64", backend=other)
        ones = B.asarray(np.ones((2, 3)), dtype="float64", backend=other)
        for call in (lambda: F.dense(x, W), lambda: F.relu_backward(x, ones)):
            with pytest.raises(TypeError, match="different backends") as info:
                call()
            assert backend.name in str(info.value) and other in str(info.value)


def test_mixing_devices_raises():
    strict = pytest.importorskip("array_api_strict")
    a = strict.asarray([1.0, 2.0])
    b = strict.asarray([1.0, 2.0], device=strict.Device("device1"))
    with pytest.raises(ValueError, match="different devices"):
        F.relu_backward(a, b)


# ------------------------------------------------------------------------------------------ host RNG

def test_host_rng_seeding():
    a = B.host_rng(5).random(4)
    b = B.host_rng(5).random(4)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, B.host_rng(6).random(4))
    gen = np.random.default_rng(1)
    assert B.host_rng(gen) is gen


def test_global_seed():
    saved = B._default_rng
    try:
        B.seed(99)
        first = B.host_rng().random(3)
        B.seed(99)
        assert B.host_rng() is B.host_rng(None)
        second = B.host_rng().random(3)
        third = B.host_rng().random(3)
    finally:
        B._default_rng = saved
    np.testing.assert_array_equal(first, second)
    assert not np.array_equal(second, third)


def test_same_seed_same_numbers_on_every_lane(backend):
    values = B.asarray(B.host_rng(31).standard_normal((4, 4)), dtype="float32")
    with B.using("numpy"):
        ref = B.asarray(B.host_rng(31).standard_normal((4, 4)), dtype="float32")
    np.testing.assert_array_equal(B.to_numpy(values), ref)


def test_seed_streams_are_reproducible_and_independent():
    draws = {p: B.seed_stream(7, p).random(64) for p in ("shuffle", "dropout", "init")}
    np.testing.assert_array_equal(draws["shuffle"], B.seed_stream(7, "shuffle").random(64))
    assert not np.allclose(draws["shuffle"], draws["dropout"]) and not np.allclose(draws["shuffle"], draws["init"])
    assert not np.allclose(draws["shuffle"], np.random.default_rng(7).random(64))
    assert not np.allclose(draws["shuffle"], B.seed_stream(8, "shuffle").random(64))
