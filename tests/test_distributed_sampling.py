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
    return sf.save_pretrained(tmp_path / "sf", tokenizer=vae), vae.save_pretrained(tmp_path / "vae")


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


def sample_interrupted_after_two_batches(models, out, monkeypatch) -> list[int]:
    """Run `mvq sample` (batch size 2) into `out` and stop it after two batches; returns their starts."""
    from mvq.inference import sample_output

    real_write = sample_output.write_batch
    written = []

    def killed_after_two_batches(folder, start, images, png):
        if len(written) == 2:
            raise KeyboardInterrupt
        real_write(folder, start, images, png)
        written.append(start)

    monkeypatch.setattr(sample_output, "write_batch", killed_after_two_batches)
    with pytest.raises(KeyboardInterrupt):
        run_sample_command(sample_argv(models, out, "--batch-size", "2"))
    monkeypatch.setattr(sample_output, "write_batch", real_write)
    return written


def test_an_interrupted_run_resumes_where_it_stopped(models, tmp_path, monkeypatch):
    from mvq.errors import UserError
    from mvq.inference.pipeline import MVQPipeline

    run_sample_command(sample_argv(models, tmp_path / "whole", "--batch-size", "2"))
    out = tmp_path / "out"
    written = sample_interrupted_after_two_batches(models, out, monkeypatch)
    assert written == [0, 2] and not (out / "samples.npz").exists()

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
    from mvq.inference import sample_output

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


@pytest.mark.parametrize("precision, dtype", [("bf16", torch.bfloat16), ("fp32", torch.float32)])
def test_precision_runs_both_models_in_that_dtype(models, tmp_path, monkeypatch, precision, dtype):
    from mvq.inference.pipeline import MVQPipeline

    seen = {"stackformer": set(), "vae": set()}
    real_range = MVQPipeline.sample_range

    def watched(self, *args):  # record what the first linear layer and the first convolution compute in
        for name, model, kind in (("stackformer", self.stackformer, torch.nn.Linear),
                                  ("vae", self.vae.decoder, torch.nn.Conv2d)):
            layer = next(m for m in model.modules() if isinstance(m, kind))
            layer.register_forward_hook(lambda module, inputs, output, name=name: seen[name].add(output.dtype))
        return real_range(self, *args)

    monkeypatch.setattr(MVQPipeline, "sample_range", watched)
    run_sample_command(sample_argv(models, tmp_path / precision, "--precision", precision, "--no-png",
                                   "--batch-size", "5"))
    assert seen == {"stackformer": {dtype}, "vae": {dtype}}


def test_a_second_run_on_an_out_in_use_is_refused(models, tmp_path, capsys):
    from mvq.inference import sample_output
    from mvq.cli import main

    out = tmp_path / "out"
    with sample_output.locked(out):  # another `mvq sample` is writing there
        with pytest.raises(SystemExit) as exit_info:
            main(["sample", *sample_argv(models, out)])
        assert exit_info.value.code == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "in use by another mvq sample" in err and "Traceback" not in err
        assert not out.exists()
    run_sample_command(sample_argv(models, out, "--no-png"))  # released: the folder can be used again
    assert folder_contents(out) == ["samples.npz"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "sf", "vae"]  # no lock file left beside it


@pytest.mark.slow
def test_every_process_of_a_refused_distributed_run_says_one_line(models, tmp_path):
    import socket

    from mvq.inference import sample_output

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    out = tmp_path / "out"
    with sample_output.locked(out):  # another `mvq sample` is writing there
        processes = [subprocess.Popen(
            [sys.executable, "-m", "mvq.cli", "sample", *sample_argv(models, out)],
            env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path), "RANK": str(rank),
                 "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in range(2)]
        results = [p.communicate(timeout=120) for p in processes]
    for process, (_, err) in zip(processes, results):
        assert process.returncode == 1, err[-2000:]
        assert "in use by another mvq sample" in err and "Traceback" not in err
    assert not out.exists()


def test_finish_reads_overlapping_shards_once(tmp_path):
    from mvq.inference import sample_output
    from mvq.errors import UserError

    folder = sample_output.SampleFolder(tmp_path / "out", tmp_path / "out", resume=False)
    sample_output.prepare(folder, {"n": 7}, png=False)
    images = np.arange(7, dtype=np.uint8)[:, None, None, None] * np.ones((1, 2, 2, 3), dtype=np.uint8)
    for start, stop in [(0, 2), (2, 4), (0, 3), (3, 6)]:  # shards of two batch sizes; 6 is still missing
        sample_output.write_batch(folder, start, images[start:stop], png=False)
    with pytest.raises(UserError, match=r"samples 6\.\.6 are missing"):
        sample_output.finish(folder, 7, 2, None)
    sample_output.write_batch(folder, 5, images[5:7], png=False)
    path = sample_output.finish(folder, 7, 2, None)
    assert np.array_equal(np.load(path)["arr_0"], images)


@pytest.mark.slow
def test_compile_gives_the_images_of_eager_sampling(models, tmp_path):
    """torch.compile on this CPU takes about a minute even for a tiny model (inductor builds C++ kernels)."""
    from mvq.models.mqvae import MQVAE
    from mvq.inference.pipeline import MVQPipeline

    argv = [*sample_argv(models, tmp_path / "eager", "--no-png", "--batch-size", "5")]
    run_sample_command(argv)
    run_sample_command([*sample_argv(models, tmp_path / "compiled", "--no-png", "--batch-size", "5"), "--compile"])
    assert np.array_equal(np.load(tmp_path / "eager" / "samples.npz")["arr_0"],
                          np.load(tmp_path / "compiled" / "samples.npz")["arr_0"])

    # A plain GPT over every cell's token (position_layers 0) has one stack to compile, not two.
    vae = MQVAE.from_config({**TINY_VAE, "keep_ratio": 1.0})
    gpt = tiny_model(position_layers=0, grid_size=vae.config.grid_size, num_tokens=vae.config.num_tokens,
                     codebook_size=vae.config.codebook_size)
    pipe = MVQPipeline(gpt, vae).compile()  # compiling is lazy: nothing is built until a batch runs
    assert pipe.stackformer.position_transformer is None
    assert pipe.stackformer.code_transformer._compiled_call_impl is not None
