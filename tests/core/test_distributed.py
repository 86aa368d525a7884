"""Cluster runs: same result as one process, and a worker killed mid-run changes nothing."""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest
import zarr

import napari_unet as nu

from .helpers import tiny_unet

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=None)
    c = distributed.Client(cluster)
    yield c
    c.close()
    cluster.close()


def _input(tmp_path, shape=(16, 64, 96)):
    x = np.random.default_rng(0).normal(100, 20, shape).astype(np.float32)
    z = zarr.create_array(str(tmp_path / "in.zarr"), shape=shape, chunks=(8, 32, 32),
                          dtype="float32")
    z[:] = x
    return tmp_path / "in.zarr"


OPTS = dict(mode="probabilities", probability_dtype="float32", tile=(8, 32, 32),
            block_shape=(8, 32, 32), device="cpu")


def test_cluster_result_equals_single_process(client, tmp_path):
    src = _input(tmp_path)
    model = tiny_unet(3, out_channels=3)
    local = nu.predict(model, src, tmp_path / "local.zarr", **OPTS)[:]
    events = []
    remote = nu.predict(model, src, tmp_path / "remote.zarr", client=client,
                        progress=events.append, **OPTS)[:]
    np.testing.assert_allclose(remote, local, rtol=0, atol=1e-6)
    assert sum(type(e).__name__ == "BlockDone" for e in events) == 2 * 2 * 3
    # Instance labelling runs on the cluster too and matches.
    a = nu.predict(model, src, tmp_path / "li.zarr", **{**OPTS, "mode": "instances"})[:]
    b = nu.predict(model, src, tmp_path / "ri.zarr", client=client,
                   **{**OPTS, "mode": "instances"})[:]
    np.testing.assert_array_equal(a > 0, b > 0)
    assert len(np.unique(a)) == len(np.unique(b))
    with pytest.raises(nu.InputError, match="path"):
        nu.predict(model, np.zeros((8, 32, 32), np.float32), tmp_path / "x.zarr",
                   client=client, **OPTS)


def test_worker_killed_mid_run_does_not_change_the_result(client, tmp_path):
    src = _input(tmp_path, shape=(32, 96, 128))
    model = tiny_unet(3, out_channels=2, base_filters=8)
    reference = nu.predict(model, src, tmp_path / "ref.zarr", **OPTS)[:]
    marks = tmp_path / "killed.zarr" / "blocks_done" / "c"
    outcome = {}

    def run():
        try:
            outcome["result"] = nu.predict(model, src, tmp_path / "killed.zarr", client=client,
                                           **OPTS)[:]
        except Exception as err:  # noqa: BLE001
            outcome["error"] = err

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.time() + 120
    while time.time() < deadline and not (marks.exists() and len(list(marks.iterdir())) >= 3):
        time.sleep(0.02)
    pids = client.run(os.getpid)
    victim = sorted(pids.values())[0]
    os.kill(victim, signal.SIGKILL)
    thread.join(timeout=300)
    assert not thread.is_alive()
    assert "error" not in outcome, outcome.get("error")
    n_blocks = 4 * 3 * 4
    assert len(list(marks.iterdir())) == n_blocks
    np.testing.assert_allclose(outcome["result"], reference, rtol=0, atol=1e-6)
