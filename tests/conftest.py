"""Shared fixtures: one real local Ray cluster per test session."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def ray_cluster():
    """A real embedded Ray cluster (127.0.0.1, 2 CPUs, token auth on), shared by the session."""
    import ray

    from distsched.cluster import connect

    try:
        info = connect(num_cpus=2)
    except Exception as exc:  # Ray gives a starting node 30 s (hard-coded), which a busy 2-core machine can miss
        if "timed out during startup" not in str(exc):
            raise
        ray.shutdown()
        info = connect(num_cpus=2)
    yield info
    ray.shutdown()
