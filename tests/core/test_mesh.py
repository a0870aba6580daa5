"""Tests for core/mesh.py: batches built where they live, one process or several."""

import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

from core import mesh as mesh_lib

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _recording_rows(calls):
    def build_rows(start, stop):
        calls.append((start, stop))
        rows = np.arange(start, stop)
        return {"x": np.stack([rows, -rows], 1).astype(np.float32), "y": {"t": rows}}
    return build_rows


def test_rows_of_each_device_on_a_four_device_mesh():
    mesh = mesh_lib.make_mesh(jax.devices()[:4])
    blocks = mesh_lib.local_row_blocks(8, mesh_lib.batch_sharded(mesh))
    assert sorted(blocks.values()) == [(0, 2), (2, 4), (4, 6), (6, 8)]
    assert blocks[jax.devices()[3]] == (6, 8)


@pytest.mark.parametrize("blocks, merged", [
    ([(4, 6), (0, 2), (2, 4)], [(0, 6)]),
    ([(6, 8), (0, 2)], [(0, 2), (6, 8)]),
    ([(0, 2), (0, 2)], [(0, 2)]),
])
def test_touching_row_blocks_are_built_in_one_call(blocks, merged):
    assert mesh_lib.merge_blocks(blocks) == merged


@pytest.mark.timeout(60)
def test_assembled_rows_equal_the_whole_batch_put_on_the_mesh():
    mesh = mesh_lib.make_mesh(jax.devices()[:4])
    calls = []
    assembled = mesh_lib.assemble_local_rows(_recording_rows(calls), 8,
                                             mesh_lib.batch_sharded(mesh))
    whole = mesh_lib.put_batch(_recording_rows([])(0, 8), mesh)
    assert calls == [(0, 8)]  # every device is local here, so one build of every row
    for got, want in zip(jax.tree.leaves(assembled), jax.tree.leaves(whole)):
        assert got.sharding == want.sharding
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_one_process_builds_every_row_once():
    calls = []
    batch = mesh_lib.put_rows(_recording_rows(calls), 4, mesh_lib.make_mesh(jax.devices()[:1]))
    assert calls == [(0, 4)]
    np.testing.assert_array_equal(np.asarray(batch["y"]["t"]), np.arange(4))


@pytest.mark.timeout(180)
def test_each_of_two_processes_builds_only_its_own_rows():
    child = os.path.join(REPO, "tests", "core", "mesh_rows_child.py")
    env = dict(os.environ, PYTHONPATH=REPO)
    out = subprocess.run([sys.executable, "-m", "experiments.launch", "--num_processes=2",
                          "--cpu_devices=2", "--", sys.executable, child], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=150)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    lines = dict(re.findall(r"^\[(\d)\] built (.*)$", out.stdout, re.M))
    rows = np.arange(16, dtype=np.float32)
    checksum = float((3 * rows * (rows + 1)).sum() + rows.sum())
    assert lines == {"0": f"[(0, 8)] shape (16, 3) checksum {checksum}",
                     "1": f"[(8, 16)] shape (16, 3) checksum {checksum}"}
