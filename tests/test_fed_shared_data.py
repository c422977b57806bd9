"""The train arrays are held once: a worker trains on the memory it is handed (the driver's arrays
in-process, the object store's pages in a Ray actor), never on a copy of its own."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from distsched.cluster import ray_executor
from distsched.cluster.executor import object_store_bytes
from distsched.cluster.local import DEFAULT_OBJECT_STORE_BYTES
from distsched.federated import ClientWorker, LocalWork, WorkerSetup

SPEC = {"name": "mlp", "input_shape": [8], "num_classes": 3, "hidden": [4]}


def _setup(n: int = 20_000, dim: int = 8) -> WorkerSetup:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, dim), dtype=np.float32)
    y = rng.integers(0, 3, n)
    offsets = np.arange(0, n + 1, n // 10, dtype=np.int64)  # 10 clients
    return WorkerSetup(x, y, np.arange(n, dtype=np.int64), offsets, SPEC, LocalWork("epochs", 1), 0)


def test_worker_trains_on_the_arrays_it_is_given_read_only_included():
    s = _setup()
    s.x.setflags(write=False)  # as numpy arrays read from Ray's object store are
    s.y.setflags(write=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "not writable" warning either
        w = ClientWorker(*s.args())
    assert w.x.data_ptr() == s.x.ctypes.data
    assert w.y.data_ptr() == s.y.ctypes.data


def test_object_store_sized_for_the_shared_arrays():
    small = _setup()
    assert object_store_bytes(small) == DEFAULT_OBJECT_STORE_BYTES
    big = WorkerSetup(np.zeros((2**20, 600), np.float32), np.zeros(2**20, np.int64),  # 2.4 GiB + 8 MiB
                      small.order, small.offsets, SPEC, small.local_work, 0)
    need = big.x.nbytes + big.y.nbytes + small.order.nbytes + small.offsets.nbytes
    assert object_store_bytes(big) == int(1.25 * need) + 256 * 1024**2


@pytest.mark.usefixtures("ray_cluster")
def test_ray_actors_read_the_object_store_copy():
    import ray

    s = _setup()  # x, y over 100 KiB each: Ray keeps smaller objects in its in-process store, copied
    pool = ray_executor()(s, 2)
    try:
        x_ref, y_ref = pool._init_args[:2]  # what the pool put in the object store
        for actor in pool.actors:
            # the actor's tensors start where the object store's copy lies in that actor (a copy made in
            # the actor would lie elsewhere); the refs are passed in a list so Ray does not resolve them
            same = ray.get(actor.__ray_call__.remote(
                lambda w, refs: (w.x.data_ptr() == ray.get(refs[0]).ctypes.data,
                                 w.y.data_ptr() == ray.get(refs[1]).ctypes.data), [x_ref, y_ref]))
            assert same == (True, True)
            got = ray.get(actor.__ray_call__.remote(lambda w: w.x.numpy().copy()))
            np.testing.assert_array_equal(got, s.x)
    finally:
        pool.close()
