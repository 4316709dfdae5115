"""Stage-1 training over two "nodes" (two torchrun launchers on this machine, gloo, Lightning num_nodes=2)."""

import os
import socket
import subprocess
import sys

import pytest
import torch

from tests.train_helpers import tiny_stage1_config


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_nodes_train_stage1_with_identical_codebooks(tmp_path):
    config = tiny_stage1_config(tmp_path, trainer={"max_steps": 4, "val_check_interval": 2, "accelerator": "cpu",
                                                   "devices": 1, "num_nodes": 2})
    run_dir = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    port = free_port()
    nodes = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(rank),
         "--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port", str(port),
         "-m", "mvq.cli", "train", str(config), "--run-dir", str(run_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path) for rank in (0, 1)]
    outputs = []
    try:
        for node in nodes:
            outputs.append(node.communicate(timeout=280)[0])
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()
    for node, output in zip(nodes, outputs):
        # Each rank compares its codebook with every other rank's at the end and fails if they differ.
        assert node.returncode == 0, output[-4000:]
    assert "Starting with 2 processes" in outputs[0]  # really one data-parallel run over both nodes
    checkpoints = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.ckpt"))
    assert checkpoints == ["run/checkpoints/best.ckpt", "run/checkpoints/last.ckpt"]  # one run, written once
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 4
    assert ckpt["state_dict"]["model.quantizer.cluster_size_ema"].sum() > 0
