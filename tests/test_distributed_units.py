"""The distributed building blocks without MPI: launcher detection, sharding, gradient Allreduce, sync BN.

Ranks are threads of this process (:mod:`tests.distributed_helpers`); the oracle is always the
single-process computation on the whole global batch (NumPy, no distributed code).
"""

from __future__ import annotations

import numpy as np
import pytest
from distributed_helpers import max_rel_err, run_ranks

from xpcnn import distributed
from xpcnn.datasets.augment import parse_augment
from xpcnn.datasets.loader import BatchIterator
from xpcnn.distributed.buckets import allreduce_gradients, plan_buckets
from xpcnn.distributed.launcher import detect, local_rank
from xpcnn.distributed.sharding import Shard, ShardedBatchIterator, ShardedGenerator, shard_bounds
from xpcnn.distributed.syncbn import SyncBatchNorm
from xpcnn.functional.norm import batch_norm_backward, batch_norm_forward
from xpcnn.layers import BatchNorm1D, BatchNorm2D
from xpcnn.parameter import ParamRef

# -- launcher -------------------------------------------------------------------------------------


@pytest.mark.parametrize("env, expected", [
    ({}, None),
    ({"PMI_RANK": "1", "PMI_SIZE": "2"}, (1, 2)),
    ({"OMPI_COMM_WORLD_RANK": "3", "OMPI_COMM_WORLD_SIZE": "4", "PMI_RANK": "0", "PMI_SIZE": "1"}, (3, 4)),
    ({"MV2_COMM_WORLD_RANK": "0", "MV2_COMM_WORLD_SIZE": "8"}, (0, 8)),
    ({"SLURM_PROCID": "2", "SLURM_STEP_NUM_TASKS": "3"}, (2, 3)),
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "4"}, None),  # a batch script, not an srun step
    ({"PMI_RANK": "0"}, None),
])
def test_detect_reads_launcher_variables(env, expected):
    launch = detect(env)
    assert (None if launch is None else (launch.rank, launch.size)) == expected


@pytest.mark.parametrize("env", [{"PMI_RANK": "x", "PMI_SIZE": "2"}, {"PMI_RANK": "2", "PMI_SIZE": "2"},
                                 {"PMI_RANK": "0", "PMI_SIZE": "0"}])
def test_detect_rejects_malformed_variables(env):
    with pytest.raises(ValueError, match="PMI_RANK"):
        detect(env)


def test_local_rank():
    assert local_rank({"MPI_LOCALRANKID": "3"}) == 3
    assert local_rank({"OMPI_COMM_WORLD_LOCAL_RANK": "1", "MPI_LOCALRANKID": "5"}) == 1
    assert local_rank({}) == 0


# -- sharding -------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [1, 2, 3, 5])
def test_shard_bounds_partition_the_batch(size):
    for n in range(size, 40):
        bounds = [shard_bounds(n, r, size) for r in range(size)]
        assert bounds[0][0] == 0 and bounds[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
        sizes = [b - a for a, b in bounds]
        assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1
        assert sizes == sorted(sizes, reverse=True)


@pytest.mark.parametrize("on_device, augment", [(False, "none"), (False, "shift2,flip"), (True, "none"),
                                              (True, "shift2,flip")])
def test_sharded_batches_are_the_rows_of_the_global_batches(on_device, augment):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(24, 1, 6, 6)).astype(np.float32)
    y = rng.integers(0, 10, 24)  # batches of 7, 7, 7, 3: shards of 3, 2, 2 and 1, 1, 1 rows
    transform = parse_augment(augment)
    kwargs = dict(shuffle=True, on_device=on_device, transform=transform)
    single = BatchIterator(x, y, 7, rng=5, **kwargs)
    shards = [ShardedBatchIterator(x, y, 7, rng=5, rank=r, size=3, **kwargs) for r in range(3)]
    for _epoch in range(2):
        batches = list(single)
        per_rank = [list(it) for it in shards]
        assert len(batches) == 4 and all(len(p) == 4 for p in per_rank)
        for i, (xb, yb) in enumerate(batches):
            xs = np.concatenate([np.asarray(p[i][0]) for p in per_rank])
            ys = np.concatenate([np.asarray(p[i][1]) for p in per_rank])
            np.testing.assert_array_equal(xs, np.asarray(xb))
            np.testing.assert_array_equal(ys, np.asarray(yb))
        assert all(it.state_dict()["rng"] == single.state_dict()["rng"] for it in shards)
    assert shards[2].shard == Shard(2, 3, 3)


def test_sharded_iterator_refuses_a_batch_smaller_than_the_ranks():
    x, y = np.zeros((9, 1, 2, 2), np.float32), np.zeros(9, np.int64)
    with pytest.raises(ValueError, match="global batch of 1 samples cannot be split over 2 ranks"):
        ShardedBatchIterator(x, y, 4, rank=0, size=2)
    assert len(ShardedBatchIterator(x, y, 4, rank=0, size=2, drop_last=True)) == 2


def test_sharded_generator_draws_the_global_rows():
    whole = np.random.default_rng(7).random((10, 3, 2))
    pieces = []
    for r in range(3):
        a, b = shard_bounds(10, r, 3)
        gen = np.random.default_rng(7)
        sharded = ShardedGenerator(lambda gen=gen: gen, lambda a=a, b=b: Shard(a, b, 10))
        pieces.append(sharded.random((b - a, 3, 2)))
        assert gen.bit_generator.state == _after_draw(7, (10, 3, 2))  # the whole global draw was consumed
    np.testing.assert_array_equal(np.concatenate(pieces), whole)


def test_an_epochs_mask_bank_gives_each_rank_its_rows_of_the_global_masks():
    """Dropout masks drawn for a whole epoch (MaskBank): with a shard set, each rank gets its rows of the
    masks one process gets, batch by batch (global batches 7, 7, 6 over 3 ranks)."""
    from xpcnn.layers.mask_bank import MaskBank

    feats, batches = (3, 2), [7, 7, 6]
    single, rng = MaskBank(), np.random.default_rng(4)
    single.plan(sum(batches))
    expected = [np.asarray(single.take(np.zeros((n, *feats)), 0.5, rng)) for n in batches]
    for r in range(3):
        bank, gen = MaskBank(), np.random.default_rng(4)
        current = Shard()
        bank.shard = lambda: current
        sharded = ShardedGenerator(lambda gen=gen: gen, lambda: current)
        bank.plan(sum(batches))
        for n, want in zip(batches, expected):
            a, b = shard_bounds(n, r, 3)
            current = Shard(a, b, n)
            got = np.asarray(bank.take(np.zeros((b - a, *feats)), 0.5, sharded))
            np.testing.assert_array_equal(got, want[a:b])


def _after_draw(seed, shape):
    g = np.random.default_rng(seed)
    g.random(shape)
    return g.bit_generator.state


# -- gradient Allreduce ---------------------------------------------------------------------------


class _Owner:
    def __init__(self):
        self.params, self.grads = {}, {}


def test_plan_buckets_respects_size_and_kind():
    grads = [np.zeros(10, np.float32), np.zeros(10, np.float64), np.zeros(30, np.float32), np.zeros(5, np.float32)]
    buckets = plan_buckets(grads, bucket_bytes=100)
    assert [b.indices for b in buckets] == [[0], [1], [2], [3]]  # 40 + 120 > 100 splits the float32 ones
    buckets = plan_buckets(grads, bucket_bytes=200)
    assert [b.indices for b in buckets] == [[0, 2, 3], [1]]


@pytest.mark.parametrize("bucket_bytes", [64, 10**9])
def test_allreduce_gradients_sums_each_gradient_once_even_when_they_alias(bucket_bytes):
    """Two names for one gradient array and a gradient that is a view of another: each still summed once."""
    size = 3
    data = [np.random.default_rng(r).normal(size=17) for r in range(size)]

    def work(comm):
        owner = _Owner()
        base = data[comm.rank].copy()
        owner.params = {"a": np.zeros(17), "b": np.zeros(17), "c": np.zeros((2, 4)), "d": np.zeros(3, np.float32)}
        owner.grads = {"a": base, "b": base, "c": base[1:9].reshape(2, 4),
                       "d": base[:3].astype(np.float32)}
        before = {k: np.array(v, copy=True) for k, v in owner.grads.items()}
        refs = [ParamRef(k, owner, k) for k in owner.params]
        allreduce_gradients(refs, comm, bucket_bytes)
        assert all(np.array_equal(v, before["a"]) for v in [base])  # the local arrays were not written
        return {k: np.asarray(v) for k, v in owner.grads.items()}

    results = run_ranks(size, work)
    total = data[0] + data[1] + data[2]
    expected = {"a": total, "b": total, "c": total[1:9].reshape(2, 4),
                "d": sum(d[:3].astype(np.float32) for d in data)}
    for res in results:
        for k, v in expected.items():
            assert res[k].shape == v.shape and res[k].dtype == v.dtype
            np.testing.assert_allclose(res[k], v, rtol=1e-6 if k == "d" else 1e-15)


# -- synchronised batch norm ----------------------------------------------------------------------


@pytest.mark.parametrize("shape, size", [((7, 3, 4, 4), 3), ((5, 6), 2), ((3, 6), 3)])
def test_sync_batch_norm_equals_batch_norm_on_the_global_batch(shape, size):
    rng = np.random.default_rng(1)
    x = rng.normal(2.0, 3.0, size=shape)
    dout = rng.normal(size=shape)
    c = shape[1]
    gamma, beta = rng.normal(size=c), rng.normal(size=c)
    rm, rv = rng.normal(size=c), rng.uniform(0.5, 2, size=c)
    ref_rm, ref_rv = rm.copy(), rv.copy()
    y_ref, cache = batch_norm_forward(x, gamma, beta, ref_rm, ref_rv, True, 0.1, 1e-5)
    dx_ref, dg_ref, db_ref = batch_norm_backward(dout, cache)

    def work(comm):
        a, b = shard_bounds(shape[0], comm.rank, size)
        my_rm, my_rv = rm.copy(), rv.copy()
        op = SyncBatchNorm(comm)
        y, c_ = op.forward(x[a:b], gamma, beta, my_rm, my_rv, True, 0.1, 1e-5)
        dx, dg, db = op.backward(dout[a:b], c_)
        return y, dx, comm.allreduce(dg), comm.allreduce(db), my_rm, my_rv

    results = run_ranks(size, work)
    y = np.concatenate([r[0] for r in results])
    dx = np.concatenate([r[1] for r in results])
    assert max_rel_err(y, y_ref) < 1e-13 and max_rel_err(dx, dx_ref) < 1e-12
    for r in results:
        assert max_rel_err(r[2], dg_ref) < 1e-13 and max_rel_err(r[3], db_ref) < 1e-13
        assert max_rel_err(r[4], ref_rm) < 1e-14 and max_rel_err(r[5], ref_rv) < 1e-14
        np.testing.assert_array_equal(r[4], results[0][4])  # identical running statistics on every rank


def test_batch_norm_layer_uses_its_sync_hook_in_train_mode_only():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(6, 4))
    calls = []

    class Recorder:
        def forward(self, *args):
            calls.append("forward")
            return args[0] * 1.0, "cache"

        def backward(self, dout, cache):
            calls.append(cache)
            return dout, dout[0], dout[0]

    layer = BatchNorm1D(4, dtype="float64")
    layer.sync = Recorder()
    layer.forward(x, train=True)
    layer.backward(x)
    layer.forward(x, train=False)
    assert calls == ["forward", "cache"]
    layer.sync = None
    y = layer.forward(x, train=True)
    np.testing.assert_allclose(y.mean(axis=0), 0, atol=1e-12)
    with pytest.raises(ValueError, match="more than one value"):
        BatchNorm2D(1, dtype="float64").forward(np.zeros((1, 1, 1, 1)), train=True)


def test_current_is_none_without_a_launcher(monkeypatch):
    for var in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE", "SLURM_STEP_NUM_TASKS"):
        monkeypatch.delenv(var, raising=False)
    distributed.shutdown()
    try:
        assert distributed.current() is None and distributed.is_root()
    finally:
        distributed.shutdown()


def test_current_names_the_extra_when_mpi4py_is_missing(monkeypatch):
    import sys

    monkeypatch.setenv("PMI_RANK", "1")
    monkeypatch.setenv("PMI_SIZE", "2")
    monkeypatch.setitem(sys.modules, "mpi4py", None)
    distributed.shutdown()
    try:
        with pytest.raises(ImportError, match=r"rank 1 of 2 .*pip install 'xpcnn\[mpi\]'"):
            distributed.current()
    finally:
        distributed.shutdown()


def test_nccl_communicator_logic_with_a_stand_in_for_cupy(monkeypatch):
    """The NCCL communicator's own code (device choice, fresh output arrays, host fallback) on the CPU:
    CuPy and cupyx.distributed replaced by NumPy stand-ins for a group of one rank.  Real NCCL is untested."""
    pytest.importorskip("mpi4py", reason="the NCCL communicator sits on mpi4py: pip install 'xpcnn[mpi]'")
    import sys
    import types

    class FakeArray(np.ndarray):
        pass

    used = []
    calls = []
    cupy = types.SimpleNamespace(
        ndarray=FakeArray,
        cuda=types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=lambda: 4),
                                   Device=lambda i: types.SimpleNamespace(use=lambda: used.append(i))),
        ascontiguousarray=lambda a: np.ascontiguousarray(a).view(FakeArray),
        empty_like=lambda a: np.empty_like(a).view(FakeArray),
        array=lambda a, copy=True, order="C": np.array(a, copy=copy, order=order).view(FakeArray))

    class FakeNCCL:
        def all_reduce(self, src, out, op="sum"):
            calls.append(("all_reduce", op))
            out[...] = src  # one rank: the sum is the input

        def broadcast(self, buf, root):
            calls.append(("broadcast", root))

    cupyx = types.ModuleType("cupyx")
    cupyx.distributed = types.SimpleNamespace(init_process_group=lambda n, r, backend, use_mpi: FakeNCCL())
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    monkeypatch.setitem(sys.modules, "cupyx", cupyx)
    monkeypatch.setitem(sys.modules, "cupyx.distributed", cupyx.distributed)
    monkeypatch.setenv("MPI_LOCALRANKID", "5")
    from xpcnn.distributed.nccl import NCCLCommunicator

    comm = NCCLCommunicator()
    assert used == [5 % 4] and comm.device == 1
    x = np.arange(6.0).reshape(2, 3).view(FakeArray)
    y = comm.allreduce(x)
    assert y is not x and isinstance(y, FakeArray) and np.array_equal(y, x)
    z = comm.broadcast(x, 0)
    assert z is not x and np.array_equal(z, x)
    assert calls == [("all_reduce", "sum"), ("broadcast", 0)]
    host = np.ones(3)
    assert np.array_equal(comm.allreduce(host), host) and len(calls) == 2  # host arrays go over MPI
