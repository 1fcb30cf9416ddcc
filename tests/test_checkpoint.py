"""Tests for :mod:`xpcnn.checkpoint`: pickle-free, atomic ``.npz`` checkpoints.

The file format is checked with tools that share no code with the
implementation (``zipfile``, ``numpy.load(allow_pickle=False)``, ``json``);
state is compared on the host after a save/load round trip, across backends too.
"""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

from xpcnn import backend as B
from xpcnn import checkpoint as ckpt
from xpcnn import models, optim
from xpcnn.layers import BatchNorm2D, Conv2D, Dense, Dropout, Flatten, MaxPool2D, ReLU
from xpcnn.model import Sequential


def _small_model(seed: int = 0, channels: int = 3) -> Sequential:
    """A tiny CNN with every kind of state: conv/dense params, batch-norm buffers, dropout."""
    return Sequential(
        Conv2D(1, channels, 3, padding=1, rng=seed), BatchNorm2D(channels), ReLU(), MaxPool2D(2),
        Flatten(), Dropout(0.25), Dense(channels * 4 * 4, 5, rng=seed + 1),
    )


def _x(n: int = 6, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 1, 8, 8)).astype(np.float32)


def _y(n: int = 6, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed + 100).integers(0, 5, n)


def _train_steps(model, opt, steps: int = 2) -> None:
    """Take a few real optimizer steps so that parameters, buffers and slots are all non-trivial."""
    from xpcnn.losses import SoftmaxCrossEntropy

    loss = SoftmaxCrossEntropy()
    for i in range(steps):
        out = model.forward(B.asarray(_x(seed=i)), train=True)
        loss.forward(out, B.asarray(_y(seed=i)))
        model.backward(loss.backward())
        opt.step()


def _host_state(model) -> dict[str, np.ndarray]:
    return {k: B.to_numpy(v).copy() for k, v in model.state_dict().items()}


def _assert_states_equal(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def _trained(tmp_path, name: str = "ckpt.npz"):
    """A model + Adam + StepLR after real steps, saved with every optional field; returns all of it."""
    model = _small_model()
    opt = optim.Adam(model.parameters(), lr=0.01)
    sched = optim.StepLR(opt, step_size=1, gamma=0.5)
    _train_steps(model, opt)
    sched.step()
    rng_state = {"global": np.random.default_rng(5).bit_generator.state, "note": [1, 2, 3]}
    history = [{"epoch": 1, "loss": 1.25, "accuracy": 0.5}, {"epoch": 2, "loss": 0.75, "accuracy": 0.625}]
    extra = {"dataset": "mnist", "normalization": {"mean": 0.1307, "std": 0.3081}}
    path = ckpt.save(tmp_path / name, model, opt, scheduler=sched, epoch=2, rng_state=rng_state,
                     history=history, extra=extra)
    return path, model, opt, sched, rng_state, history, extra


def _write_npz(path, **arrays) -> None:
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def _meta_bytes(meta) -> np.ndarray:
    return np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)


# ------------------------------------------------------------------------------------------- round trip


def test_round_trip_restores_everything(tmp_path):
    path, model, opt, sched, rng_state, history, extra = _trained(tmp_path)
    assert path == tmp_path / "ckpt.npz" and path.is_file()

    fresh = _small_model(seed=99)  # different initial weights
    fresh_opt = optim.Adam(fresh.parameters(), lr=0.5)
    fresh_sched = optim.StepLR(fresh_opt, step_size=1, gamma=0.5)
    assert not np.array_equal(B.to_numpy(fresh[0].params["W"]), B.to_numpy(model[0].params["W"]))

    meta = ckpt.restore(path, fresh, fresh_opt, fresh_sched)
    _assert_states_equal(_host_state(fresh), _host_state(model))
    # batch-norm running statistics are part of the state and were moved by training
    assert not np.array_equal(B.to_numpy(model[1].buffers["running_mean"]), np.zeros(3, np.float32))

    got, want = fresh_opt.state_dict(), opt.state_dict()
    assert got["type"] == want["type"] == "Adam"
    assert got["step"] == want["step"] == 2
    assert got["param_steps"] == want["param_steps"]
    assert got["hyper"] == want["hyper"]
    _assert_states_equal({k: B.to_numpy(v) for k, v in got["slots"].items()},
                         {k: B.to_numpy(v) for k, v in want["slots"].items()})
    assert fresh_sched.state_dict() == sched.state_dict()
    assert fresh_opt.lr == opt.lr == pytest.approx(0.005)

    assert meta["epoch"] == 2
    assert meta["rng_state"] == json.loads(json.dumps(rng_state))
    assert meta["history"] == history
    assert meta["extra"] == extra
    assert meta["format"] == ckpt.FORMAT and meta["version"] == ckpt.VERSION


def test_restored_rng_state_continues_the_same_stream(tmp_path):
    gen = np.random.default_rng(123)
    gen.random(7)
    model = _small_model()
    path = ckpt.save(tmp_path / "r.npz", model, rng_state={"g": gen.bit_generator.state})
    expected = gen.random(5)
    other = np.random.default_rng(0)
    other.bit_generator.state = ckpt.load(path)[0]["rng_state"]["g"]
    np.testing.assert_array_equal(other.random(5), expected)


def test_restore_continues_training_identically(tmp_path):
    """A restored optimizer takes exactly the step the original would have taken."""
    path, model, opt, sched, *_ = _trained(tmp_path)
    fresh = _small_model(seed=42)
    fresh_opt = optim.Adam(fresh.parameters(), lr=1.0)
    ckpt.restore(path, fresh, fresh_opt, optim.StepLR(fresh_opt, step_size=1, gamma=0.5))
    B.seed(7)
    _train_steps(model, opt, steps=1)
    B.seed(7)
    _train_steps(fresh, fresh_opt, steps=1)
    _assert_states_equal(_host_state(fresh), _host_state(model))


def test_load_model_rebuilds_an_equal_model(tmp_path):
    path, model, *_ = _trained(tmp_path)
    rebuilt, meta = ckpt.load_model(path)
    assert rebuilt is not model
    assert rebuilt.config() == model.config()
    _assert_states_equal(_host_state(rebuilt), _host_state(model))
    x = B.asarray(_x(10, seed=3))
    np.testing.assert_array_equal(B.to_numpy(rebuilt.predict(x)), B.to_numpy(model.predict(x)))
    assert meta["epoch"] == 2


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_load_model_for_every_ready_made_model(tmp_path, name):
    model = models.build(name, rng=1)
    path = ckpt.save(tmp_path / f"{name}.npz", model)
    rebuilt, meta = ckpt.load_model(path)
    assert meta["optimizer"] is None and meta["scheduler"] is None
    x = np.random.default_rng(0).standard_normal((2, 1, 28, 28)).astype(np.float32)
    np.testing.assert_array_equal(B.to_numpy(rebuilt.predict(x)), B.to_numpy(model.predict(x)))


def test_model_only_checkpoint_cannot_restore_an_optimizer(tmp_path):
    model = _small_model()
    path = ckpt.save(tmp_path / "m.npz", model)
    ckpt.restore(path, _small_model(seed=5))  # model only: fine
    fresh = _small_model(seed=5)
    with pytest.raises(ckpt.CheckpointError, match="no optimizer state"):
        ckpt.restore(path, fresh, optim.SGD(fresh.parameters()))


def test_optimizer_type_mismatch(tmp_path):
    path, *_ = _trained(tmp_path)
    fresh = _small_model()
    with pytest.raises(ckpt.CheckpointError, match="Adam.*SGD|SGD.*Adam"):
        ckpt.restore(path, fresh, optim.SGD(fresh.parameters()))


# ------------------------------------------------------------------------------------------- file format


def test_file_is_a_plain_npz_zip(tmp_path):
    path, model, opt, *_ = _trained(tmp_path)
    assert zipfile.is_zipfile(path)
    with zipfile.ZipFile(path) as z:
        names = set(z.namelist())
        assert all(info.compress_type == zipfile.ZIP_STORED for info in z.infolist())
    assert "__meta__.npy" in names
    assert {f"model/{k}.npy" for k in model.state_dict()} <= names
    assert {f"optim/{k}.npy" for k in opt.state_dict()["slots"]} <= names
    with np.load(path, allow_pickle=False) as npz:
        meta = json.loads(npz["__meta__"].tobytes().decode("utf-8"))
        np.testing.assert_array_equal(npz["model/0.W"], B.to_numpy(model[0].params["W"]))
        np.testing.assert_array_equal(npz["model/1.running_var"], B.to_numpy(model[1].buffers["running_var"]))
        for name in npz.files:
            assert npz[name].dtype != object
    assert meta["model_config"] == model.config()
    assert meta["optimizer"]["type"] == "Adam"
    assert meta["scheduler"]["type"] == "StepLR"


def test_metadata_must_be_json_serialisable(tmp_path):
    model = _small_model()
    with pytest.raises(ckpt.CheckpointError, match="JSON"):
        ckpt.save(tmp_path / "x.npz", model, extra={"bad": object()})
    assert list(tmp_path.iterdir()) == []  # nothing written, not even a temp file


def test_save_creates_parent_directories(tmp_path):
    path = ckpt.save(tmp_path / "a" / "b" / "c.npz", _small_model())
    assert path.is_file()
    ckpt.load(path)


# ------------------------------------------------------------------------------------------- atomic write


class _Crash(RuntimeError):
    pass


def _crashing_savez(real_savez, exc: BaseException):
    """An np.savez that writes half of a real checkpoint, then fails (a crash mid-write)."""

    def savez(file, **arrays):
        import io

        buf = io.BytesIO()
        real_savez(buf, **arrays)
        data = buf.getvalue()
        file.write(data[: len(data) // 2])
        file.flush()
        raise exc

    return savez


@pytest.mark.parametrize("exc", [_Crash("disk full"), KeyboardInterrupt()], ids=["error", "interrupt"])
def test_crash_during_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch, exc):
    old = _small_model(seed=1)
    path = ckpt.save(tmp_path / "ckpt.npz", old, epoch=1)
    before = path.read_bytes()

    real = np.savez
    monkeypatch.setattr(np, "savez", _crashing_savez(real, exc))
    with pytest.raises(type(exc)):
        ckpt.save(path, _small_model(seed=2), epoch=2)
    monkeypatch.setattr(np, "savez", real)

    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.npz"]  # no temp file left behind
    assert path.read_bytes() == before
    rebuilt, meta = ckpt.load_model(path)
    assert meta["epoch"] == 1
    _assert_states_equal(_host_state(rebuilt), _host_state(old))


def test_crash_during_first_write_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(np, "savez", _crashing_savez(np.savez, _Crash("disk full")))
    with pytest.raises(_Crash):
        ckpt.save(tmp_path / "ckpt.npz", _small_model())
    assert list(tmp_path.iterdir()) == []


def test_overwrite_replaces_the_checkpoint(tmp_path):
    path = ckpt.save(tmp_path / "ckpt.npz", _small_model(seed=1), epoch=1)
    new = _small_model(seed=2)
    ckpt.save(path, new, epoch=2)
    rebuilt, meta = ckpt.load_model(path)
    assert meta["epoch"] == 2
    _assert_states_equal(_host_state(rebuilt), _host_state(new))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.npz"]


# ------------------------------------------------------------------------------------------- bad files


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        ckpt.load(tmp_path / "nope.npz")
    with pytest.raises(FileNotFoundError):
        ckpt.load_model(tmp_path / "nope.npz")
    with pytest.raises(FileNotFoundError):
        ckpt.restore(tmp_path / "nope.npz", _small_model())


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.5, 0.9, 0.999])
def test_truncated_file(tmp_path, fraction):
    path, *_ = _trained(tmp_path)
    data = path.read_bytes()
    cut = tmp_path / "cut.npz"
    cut.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(ckpt.CheckpointError, match="truncated or corrupt"):
        ckpt.load(cut)
    with pytest.raises(ckpt.CheckpointError, match="truncated or corrupt"):
        ckpt.restore(cut, _small_model())


@pytest.mark.slow
def test_truncations_and_every_flipped_byte_are_caught(tmp_path):
    """Any cut, or any single corrupted byte, gives CheckpointError -- or, where the byte is one zip
    ignores (a timestamp, the local header's copy of a field), exactly the original contents."""
    model = Sequential(Dense(3, 2, rng=0))
    opt = optim.Momentum(model.parameters())
    path = ckpt.save(tmp_path / "s.npz", model, opt, epoch=4, history=[{"loss": 1.0}])
    data = path.read_bytes()
    meta0, model0, optim0 = ckpt.load(path)
    bad = tmp_path / "bad.npz"
    for cut in sorted({*range(0, len(data), 5), *range(len(data) - 100, len(data))}):  # the zip directory is last
        bad.write_bytes(data[:cut])
        with pytest.raises(ckpt.CheckpointError):
            ckpt.load(bad)
    undetected = 0
    for pos in range(len(data)):
        corrupted = bytearray(data)
        corrupted[pos] ^= 0xFF
        bad.write_bytes(bytes(corrupted))
        try:
            meta, model_arrays, optim_arrays = ckpt.load(bad)
        except ckpt.CheckpointError:
            continue
        undetected += 1
        assert meta == meta0, pos
        _assert_states_equal(model_arrays, model0)
        _assert_states_equal(optim_arrays, optim0)
    assert undetected < len(data) // 4  # most bytes matter (and the CRC catches flips in the data)


def test_npz_without_meta(tmp_path):
    path = tmp_path / "plain.npz"
    _write_npz(path, a=np.arange(3))
    with pytest.raises(ckpt.CheckpointError, match="__meta__"):
        ckpt.load(path)
    with pytest.raises(ckpt.CheckpointError, match="__meta__"):
        ckpt.load_model(path)


def test_zip_that_is_not_an_npz(tmp_path):
    path = tmp_path / "other.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("hello.txt", "hi")
    with pytest.raises(ckpt.CheckpointError):
        ckpt.load(path)
    # a raw (non-.npy) __meta__ member holding perfectly valid metadata is still refused
    path2 = tmp_path / "raw_meta.zip"
    with zipfile.ZipFile(path2, "w") as z:
        z.writestr("__meta__", json.dumps({"format": ckpt.FORMAT, "version": ckpt.VERSION, "epoch": 0,
                                           "model_config": []}))
    with pytest.raises(ckpt.CheckpointError, match="__meta__"):
        ckpt.load(path2)


def test_not_a_zip_at_all(tmp_path):
    path = tmp_path / "text.npz"
    path.write_text("this is not a checkpoint\n" * 20)
    with pytest.raises(ckpt.CheckpointError, match="truncated or corrupt"):
        ckpt.load(path)


@pytest.mark.parametrize("meta, match", [
    ({"format": "something-else", "version": 1, "epoch": 0, "model_config": []}, "expected format"),
    ({"version": 1, "epoch": 0, "model_config": []}, "expected format"),
    ({"format": ckpt.FORMAT, "version": ckpt.VERSION + 1, "epoch": 0, "model_config": []}, "version"),
    ({"format": ckpt.FORMAT, "epoch": 0, "model_config": []}, "version"),
    ({"format": ckpt.FORMAT, "version": ckpt.VERSION}, "model_config"),
    (["not", "a", "dict"], "expected format"),
])
def test_wrong_format_or_version(tmp_path, meta, match):
    path = tmp_path / "m.npz"
    _write_npz(path, __meta__=_meta_bytes(meta))
    with pytest.raises(ckpt.CheckpointError, match=match):
        ckpt.load(path)
    with pytest.raises(ckpt.CheckpointError, match=match):
        ckpt.restore(path, _small_model())


def test_meta_not_json(tmp_path):
    path = tmp_path / "m.npz"
    _write_npz(path, __meta__=np.frombuffer(b"\xff\xfe{not json", dtype=np.uint8))
    with pytest.raises(ckpt.CheckpointError, match="JSON"):
        ckpt.load(path)


def test_unknown_layer_type_is_not_executed(tmp_path):
    meta = {"format": ckpt.FORMAT, "version": ckpt.VERSION, "epoch": 0,
            "model_config": [{"type": "os.system", "args": {"command": "echo pwned"}}]}
    path = tmp_path / "m.npz"
    _write_npz(path, __meta__=_meta_bytes(meta))
    with pytest.raises(ckpt.CheckpointError, match="cannot rebuild"):
        ckpt.load_model(path)


def test_architecture_mismatch_names_both_configs(tmp_path):
    path = ckpt.save(tmp_path / "m.npz", _small_model(channels=3))
    other = _small_model(channels=4)
    before = _host_state(other)
    with pytest.raises(ckpt.CheckpointError) as info:
        ckpt.restore(path, other)
    message = str(info.value)
    assert "architecture" in message
    assert str(_small_model(channels=3).config()) in message
    assert str(other.config()) in message
    _assert_states_equal(_host_state(other), before)  # nothing was loaded


def test_state_array_with_wrong_shape(tmp_path):
    """Same config, but an array inside was tampered with: refused with the parameter's name."""
    model = _small_model()
    path = ckpt.save(tmp_path / "m.npz", model)
    with np.load(path, allow_pickle=False) as npz:
        contents = {name: npz[name] for name in npz.files}
    contents["model/0.W"] = contents["model/0.W"][:1]
    _write_npz(tmp_path / "t.npz", **contents)
    with pytest.raises(ckpt.CheckpointError, match="0.W"):
        ckpt.restore(tmp_path / "t.npz", _small_model())
    with pytest.raises(ckpt.CheckpointError, match="0.W"):
        ckpt.load_model(tmp_path / "t.npz")


class _Payload:
    """Unpickling this object creates a marker file: proof that code ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_object_array_is_never_unpickled(tmp_path):
    marker = tmp_path / "pwned"
    evil = np.empty(1, dtype=object)
    evil[0] = _Payload(str(marker))
    meta = {"format": ckpt.FORMAT, "version": ckpt.VERSION, "epoch": 0, "model_config": _small_model().config()}
    path = tmp_path / "evil.npz"
    _write_npz(path, __meta__=_meta_bytes(meta), **{"model/0.W": evil})  # np.savez pickles object arrays

    with pytest.raises(ckpt.CheckpointError):
        ckpt.load(path)
    with pytest.raises(ckpt.CheckpointError):
        ckpt.load_model(path)
    with pytest.raises(ckpt.CheckpointError):
        ckpt.restore(path, _small_model())
    assert not marker.exists()

    # positive control: the payload really does run when a loader allows pickle
    with np.load(path, allow_pickle=True) as npz:
        npz["model/0.W"]
    assert marker.exists()


# ------------------------------------------------------------------------------------------- across backends


def test_checkpoint_moves_between_backends(tmp_path, backend):
    """Written on NumPy, read on the lane (and written on the lane, read on NumPy)."""
    with B.using("numpy"):
        path, model, opt, sched, *_ = _trained(tmp_path, "numpy.npz")
    want = _host_state(model)

    rebuilt, _ = ckpt.load_model(path)
    for value in rebuilt.state_dict().values():
        assert B.backend_name(value) == B.backend_name(B.asarray(np.zeros(1)))
    _assert_states_equal(_host_state(rebuilt), want)

    fresh = _small_model(seed=9)
    fresh_opt = optim.Adam(fresh.parameters(), lr=1.0)
    fresh_sched = optim.StepLR(fresh_opt, step_size=1, gamma=0.5)
    ckpt.restore(path, fresh, fresh_opt, fresh_sched)
    _assert_states_equal(_host_state(fresh), want)
    got_slots = {k: B.to_numpy(v) for k, v in fresh_opt.state_dict()["slots"].items()}
    _assert_states_equal(got_slots, {k: B.to_numpy(v) for k, v in opt.state_dict()["slots"].items()})
    assert fresh_opt.lr == opt.lr

    x = _x(4, seed=11)
    with B.using("numpy"):
        ref = B.to_numpy(model.predict(x))
    np.testing.assert_allclose(B.to_numpy(fresh.predict(B.asarray(x))), ref, rtol=1e-5, atol=1e-6)

    back = ckpt.save(tmp_path / "lane.npz", fresh, fresh_opt, scheduler=fresh_sched)
    with B.using("numpy"):
        again, _ = ckpt.load_model(back)
        assert all(isinstance(v, np.ndarray) for v in again.state_dict().values())
    _assert_states_equal(_host_state(again), want)


def test_failed_restore_leaves_model_and_optimizer_unchanged(tmp_path):
    """A checkpoint whose optimizer state does not fit is refused without touching the model."""
    from xpcnn.layers import Dense
    from xpcnn.model import Sequential

    src = Sequential(Dense(3, 2, rng=1))
    ckpt.save(tmp_path / "sgd.npz", src, optim.Momentum(src.parameters(), lr=0.1))
    dst = Sequential(Dense(3, 2, rng=2))
    opt = optim.Adam(dst.parameters())
    weights = {k: B.to_numpy(v).copy() for k, v in dst.state_dict().items()}
    with pytest.raises(ckpt.CheckpointError):
        ckpt.restore(tmp_path / "sgd.npz", dst, opt)  # Momentum state into Adam
    for k, v in dst.state_dict().items():
        np.testing.assert_array_equal(B.to_numpy(v), weights[k])
    assert opt.step_count == 0 and set(opt.state_dict()["slots"]) == {"0.W/exp_avg", "0.W/exp_avg_sq",
                                                                       "0.b/exp_avg", "0.b/exp_avg_sq"}
