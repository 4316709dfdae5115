"""`mvq sample` on several processes, resumed after an interruption, and its --precision / --compile."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from tests.test_sampling import TINY_VAE, run_sample_command, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def models(tmp_path):
    from mvq.models.mqvae import MQVAE

    torch.manual_seed(0)
    vae = MQVAE.from_config(TINY_VAE)
    sf = tiny_model(num_classes=3, grid_size=vae.config.grid_size, num_tokens=vae.config.num_tokens,
                    codebook_size=vae.config.codebook_size)
    return sf.save_pretrained(tmp_path / "sf"), vae.save_pretrained(tmp_path / "vae")


def sample_argv(models, out, *extra):
    sf_dir, vae_dir = models
    return ["--stackformer", str(sf_dir), "--vae", str(vae_dir), "--num-images", "5", "--labels", "0", "2",
            "--seed", "4", "--device", "cpu", "--out", str(out), *extra]


def folder_contents(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


@pytest.mark.slow
def test_two_processes_write_the_bytes_of_one_process(models, tmp_path):
    run_sample_command(sample_argv(models, tmp_path / "one", "--batch-size", "2"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    launched = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "mvq.cli",
         "sample", *sample_argv(models, tmp_path / "two", "--batch-size", "2")],
        env=env, capture_output=True, text=True, timeout=120)
    assert launched.returncode == 0, launched.stderr[-3000:]
    one, two = tmp_path / "one", tmp_path / "two"
    assert (two / "samples.npz").read_bytes() == (one / "samples.npz").read_bytes()
    saved = np.load(two / "samples.npz")
    assert saved["labels"].tolist() == [0, 2, 0, 2, 0] and saved["arr_0"].shape == (5, 16, 16, 3)
    assert folder_contents(two) == folder_contents(one) == ["images", *[f"images/{i:06d}.png" for i in range(5)],
                                                          "samples.npz"]
    for i in range(5):
        assert (two / "images" / f"{i:06d}.png").read_bytes() == (one / "images" / f"{i:06d}.png").read_bytes()


def test_an_interrupted_run_resumes_where_it_stopped(models, tmp_path, monkeypatch):
    from mvq import sample_output
    from mvq.errors import UserError
    from mvq.pipeline import MVQPipeline

    run_sample_command(sample_argv(models, tmp_path / "whole", "--batch-size", "2"))

    real_write = sample_output.write_batch
    written = []

    def killed_after_two_batches(folder, start, images, png):
        if len(written) == 2:
            raise KeyboardInterrupt
        real_write(folder, start, images, png)
        written.append(start)

    monkeypatch.setattr(sample_output, "write_batch", killed_after_two_batches)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        run_sample_command(sample_argv(models, out, "--batch-size", "2"))
    assert written == [0, 2] and not (out / "samples.npz").exists()
    monkeypatch.setattr(sample_output, "write_batch", real_write)

    # Another request on the unfinished folder is refused, naming what differs; nothing is touched.
    before = folder_contents(out)
    with pytest.raises(UserError, match=r"different request \(differs in: seed\)"):
        run_sample_command([*sample_argv(models, out, "--batch-size", "2"), "--seed", "5"])
    assert folder_contents(out) == before

    sampled = []
    real_range = MVQPipeline.sample_range

    def counting(self, start, stop, *args):
        sampled.append((start, stop))
        return real_range(self, start, stop, *args)

    monkeypatch.setattr(MVQPipeline, "sample_range", counting)
    run_sample_command(sample_argv(models, out, "--batch-size", "3"))  # the same request, another batch size
    assert sampled == [(4, 5)]  # only what was missing
    assert (out / "samples.npz").read_bytes() == (tmp_path / "whole" / "samples.npz").read_bytes()
    assert folder_contents(out) == folder_contents(tmp_path / "whole")  # the state folder is gone


def test_overwrite_replaces_an_unfinished_run_of_another_request(models, tmp_path, monkeypatch):
    from mvq import sample_output

    out = tmp_path / "out"

    def interrupted(folder, start, images, png):
        raise KeyboardInterrupt

    monkeypatch.setattr(sample_output, "write_batch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_sample_command(sample_argv(models, out, "--no-png"))
    monkeypatch.undo()
    run_sample_command([*sample_argv(models, out, "--no-png"), "--seed", "9", "--overwrite"])
    run_sample_command([*sample_argv(models, tmp_path / "fresh", "--no-png"), "--seed", "9"])
    assert folder_contents(out) == ["samples.npz"]
    assert (out / "samples.npz").read_bytes() == (tmp_path / "fresh" / "samples.npz").read_bytes()
    assert not any(p.name.startswith(".out") for p in tmp_path.iterdir())  # no staging folder left


def test_fp16_on_the_cpu_is_one_line_error_and_bf16_samples(models, tmp_path, capsys):
    from mvq.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["sample", *sample_argv(models, tmp_path / "fp16", "--precision", "fp16")])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "fp16 needs a CUDA GPU" in err and "Traceback" not in err
    assert not (tmp_path / "fp16").exists()

    run_sample_command(sample_argv(models, tmp_path / "bf16", "--precision", "bf16", "--no-png"))
    run_sample_command(sample_argv(models, tmp_path / "fp32", "--no-png"))
    bf16 = np.load(tmp_path / "bf16" / "samples.npz")["arr_0"]
    fp32 = np.load(tmp_path / "fp32" / "samples.npz")["arr_0"]
    assert bf16.shape == fp32.shape == (5, 16, 16, 3) and bf16.dtype == np.uint8


@pytest.mark.slow
def test_compile_gives_the_images_of_eager_sampling(models, tmp_path):
    """torch.compile on this CPU takes about a minute even for a tiny model (inductor builds C++ kernels)."""
    argv = [*sample_argv(models, tmp_path / "eager", "--no-png", "--batch-size", "5")]
    run_sample_command(argv)
    run_sample_command([*sample_argv(models, tmp_path / "compiled", "--no-png", "--batch-size", "5"), "--compile"])
    assert np.array_equal(np.load(tmp_path / "eager" / "samples.npz")["arr_0"],
                          np.load(tmp_path / "compiled" / "samples.npz")["arr_0"])
