import os
import subprocess
import sys

import pytest
import torch

from mvq.config import ConfigError
from mvq.models.mqvae import MQVAE
from mvq.training.run import export, train
from tests.train_helpers import assert_interrupted_run_resumes_exactly, model_state, tiny_stage1_config


@pytest.mark.slow
def test_short_run_writes_folder_and_exports(tmp_path):
    run_dir = train(str(tiny_stage1_config(tmp_path)), [], run_dir=str(tmp_path / "run"))
    assert (run_dir / "config.yaml").is_file()
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert (run_dir / "checkpoints" / "best.ckpt").is_file()
    assert list((run_dir / "images").glob("step_*.png"))
    assert list((run_dir / "logs").glob("events.out.tfevents.*"))
    ckpt, state = model_state(run_dir)
    assert ckpt["global_step"] == 6
    assert ckpt["mvq_state"]["batches_trained"] == 6
    assert len(ckpt["optimizer_states"]) == 2 and len(ckpt["lr_schedulers"]) == 2
    assert any(k.startswith("loss.discriminator.") for k in state)
    assert "model.quantizer.embed_ema" in state
    # The GAN was switched on at disc_start=2: the discriminator optimizer has state.
    assert ckpt["optimizer_states"][1]["state"]
    out = export(run_dir, tmp_path / "vae")
    vae = MQVAE.from_pretrained(out)
    for key, value in vae.state_dict().items():
        assert torch.equal(value, state["model." + key]), key
    # Scalars that users look at are in TensorBoard.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "logs")).Reload()
    tags = set(events.Tags()["scalars"])
    for tag in ["train/l1_loss", "train/codebook_loss", "train/lr", "train/gan_weight", "train/disc_loss",
                "val/rec_loss", "val/codebook_usage", "val/perplexity", "val/score_kept", "val/score_masked"]:
        assert tag in tags, tag


@pytest.mark.slow
def test_validation_measures_the_budgets_run_val_keep_names(tmp_path):
    """An any-K model's validation logs PSNR at each budget of run.val_keep: that of the model at that K."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.data import DataLoader

    from mvq.data.build import build_dataset
    from mvq.data.config import DataConfig
    from mvq.evaluation.image_metrics import psnr

    path = tiny_stage1_config(tmp_path, model={"keep_ratio": 1.0, "train_keep_min": 0.0625},
                              trainer={"max_steps": 3}, run={"val_keep": [4, 16]})
    run_dir = train(str(path), [], run_dir=str(tmp_path / "run"))
    events = EventAccumulator(str(run_dir / "logs")).Reload()
    logged = {tag: events.Scalars(tag)[-1].value for tag in ("val/psnr", "val/psnr_keep4", "val/psnr_keep16")}
    vae = MQVAE.from_pretrained(export(run_dir, tmp_path / "vae", which="last")).eval()
    config = DataConfig(dataset="synthetic", resolution=32, num_train=48, num_val=8)
    images = torch.cat([batch["image"] for batch in DataLoader(build_dataset(config, "val"), batch_size=4)])
    with torch.no_grad():
        for tag, keep in (("val/psnr", None), ("val/psnr_keep4", 4), ("val/psnr_keep16", 16)):
            measured = psnr(images, vae(images, keep=keep).reconstruction.clamp(-1, 1)).mean().item()
            assert logged[tag] == pytest.approx(measured, abs=1e-3), tag
    assert len({round(value, 4) for value in logged.values()}) == 3  # each budget is a different reconstruction


def test_run_val_keep_is_refused_where_it_means_nothing(tmp_path):
    from mvq.config import load_yaml
    from mvq.training.stage1_config import parse_stage1

    raw = load_yaml(tiny_stage1_config(tmp_path))
    with pytest.raises(ConfigError, match=r"run.val_keep: budgets must lie between 1 and the model's K \(16\)"):
        parse_stage1({**raw, "run": {"val_keep": [17]}})
    vqgan = {**raw, "model": {"architecture": "vqgan", "resolution": 32, "ch": 32, "ch_mult": [1, 2, 2],
                              "num_res_blocks": 1, "attn_resolutions": [], "z_channels": 64,
                              "codebook_size": 64, "codebook_dim": 16}}
    parse_stage1(vqgan)
    with pytest.raises(ConfigError, match="a VQGAN keeps every cell"):
        parse_stage1({**vqgan, "run": {"val_keep": [4]}})
    from mvq.training.stage2_config import parse_stage2

    with pytest.raises(ConfigError, match="run.val_keep is for stage 1"):
        parse_stage2({"stage": 2, "run": {"val_keep": [4]}})


@pytest.mark.slow
def test_accumulation_really_accumulates(tmp_path):
    path = tiny_stage1_config(tmp_path, optim={"accumulate_grad_batches": 3},
                              trainer={"max_steps": 2, "val_check_interval": 6})
    run_dir = train(str(path), [], run_dir=str(tmp_path / "run"))
    ckpt, _ = model_state(run_dir)
    # 2 optimizer steps took 6 batches, and the generator's Adam saw exactly 2 steps.
    assert ckpt["global_step"] == 2 and ckpt["mvq_state"]["batches_trained"] == 6
    adam_steps = {float(s["step"]) for s in ckpt["optimizer_states"][0]["state"].values()}
    assert adam_steps == {2.0}
    # lr scaling follows accumulation: base_lr × batch × devices × accumulation.
    path = tiny_stage1_config(tmp_path, optim={"lr": None, "base_lr": 1e-4, "accumulate_grad_batches": 3},
                              trainer={"max_steps": 1, "val_check_interval": 3})
    run_dir = train(str(path), [], run_dir=str(tmp_path / "run2"))
    ckpt, _ = model_state(run_dir)
    assert ckpt["optimizer_states"][0]["param_groups"][0]["initial_lr"] == pytest.approx(1e-4 * 4 * 1 * 3)


@pytest.mark.slow
def test_misspelt_key_fails_before_work(tmp_path):
    path = tiny_stage1_config(tmp_path, optim={"base_lrr": 1.0})
    with pytest.raises(ConfigError, match="base_lrr"):
        train(str(path), [], run_dir=str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()
    with pytest.raises(ConfigError, match="max_step"):
        train(str(tiny_stage1_config(tmp_path)), ["trainer.max_step=3"], run_dir=str(tmp_path / "run"))
    result = subprocess.run([sys.executable, "-m", "mvq.cli", "train", str(tiny_stage1_config(tmp_path)),
                             "model.keep_ration=0.3"], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 1 and "keep_ration" in result.stderr and "keep_ratio" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_vgg_weights_stop_before_first_step(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-hub"))
    path = tiny_stage1_config(tmp_path, loss={"perceptual_weight": 1.0})
    with pytest.raises(FileNotFoundError, match="vgg16-397923af.pth"):
        train(str(path), [], run_dir=str(tmp_path / "run"))
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_run_without_discriminator_saves_none_and_resumes_exactly(tmp_path):
    # disc_start: null builds no discriminator: the checkpoint holds the generator and its optimizer alone.
    steps = 8
    path = tiny_stage1_config(tmp_path, loss={"disc_start": None}, trainer={"max_steps": steps})
    assert_interrupted_run_resumes_exactly(path, tmp_path, steps)
    ckpt, state = model_state(tmp_path / "interrupted")
    assert not any(k.startswith("loss.") for k in state)
    assert len(ckpt["optimizer_states"]) == 1 and len(ckpt["lr_schedulers"]) == 1


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sigterm_then_resume_equals_uninterrupted_run(tmp_path):
    steps = 16
    # Two loading workers: their prefetching starts before the resumed run's later hooks.
    path = tiny_stage1_config(tmp_path, trainer={"max_steps": steps, "val_check_interval": 5},
                              data={"num_workers": 2})
    assert_interrupted_run_resumes_exactly(path, tmp_path, steps)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_process_ddp_fit_keeps_codebooks_identical(tmp_path):
    path = tiny_stage1_config(tmp_path, trainer={"max_steps": 4, "val_check_interval": 2, "accelerator": "cpu",
                                                 "devices": 2, "strategy": "ddp"})
    run_dir = tmp_path / "ddp"
    # One thread per process: two processes with two threads each would oversubscribe two cores.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "mvq.cli", "train", str(path), "--run-dir", str(run_dir)],
                            capture_output=True, text=True, timeout=280, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    ckpt, state = model_state(run_dir)
    assert ckpt["global_step"] == 4
    # The learning rate is scaled by the number of devices.
    assert ckpt["optimizer_states"][0]["param_groups"][0]["initial_lr"] == pytest.approx(1e-3)
    assert state["model.quantizer.cluster_size_ema"].sum() > 0


@pytest.mark.slow
def test_training_on_a_folder_with_broken_files_names_them(tmp_path):
    import numpy as np
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(rng.integers(0, 255, (36, 40, 3), dtype=np.uint8)).save(folder / f"good{i}.png")
    Image.fromarray(rng.integers(0, 255, (36, 40, 3), dtype=np.uint8)).save(folder / "cut.jpg")
    data = (folder / "cut.jpg").read_bytes()
    (folder / "cut.jpg").write_bytes(data[: len(data) // 2])
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.txt").write_text("not an image")
    path = tiny_stage1_config(tmp_path, trainer={"max_steps": 2, "val_check_interval": 2})
    with pytest.warns(UserWarning) as warned:
        run_dir = train(str(path), [], run_dir=str(tmp_path / "run"), data_path=str(folder))
    messages = " ".join(str(w.message) for w in warned)
    for name in ["cut.jpg", "empty.png", "notes.txt"]:
        assert name in messages
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.slow
def test_bf16_mixed_precision_on_cpu(tmp_path):
    path = tiny_stage1_config(tmp_path, trainer={"max_steps": 2, "val_check_interval": 2,
                                                 "precision": "bf16-mixed"})
    run_dir = train(str(path), [], run_dir=str(tmp_path / "run"))
    ckpt, state = model_state(run_dir)
    assert ckpt["global_step"] == 2
    assert state["model.quantizer.codebook"].dtype == torch.float32
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


@pytest.mark.slow
def test_lr_schedule_spans_the_epochs_of_the_run(tmp_path):
    # 16 images in batches of 4: 4 optimizer steps per epoch, 8 in two epochs; warm-up half an epoch.
    # The schedule is built before Lightning loads the training data; it must still count its batches.
    path = tiny_stage1_config(tmp_path, data={"num_train": 16}, optim={"warmup_steps": None, "warmup_epochs": 0.5},
                              trainer={"max_steps": -1, "max_epochs": 2, "val_check_interval": 1.0,
                                       "check_val_every_n_epoch": 1})
    run_dir = train(str(path), [], run_dir=str(tmp_path / "run"))
    ckpt, _ = model_state(run_dir)
    assert ckpt["global_step"] == 8
    for scheduler in ckpt["lr_schedulers"]:  # generator and discriminator
        schedule = scheduler["lr_lambdas"][0]
        assert (schedule["warmup_steps"], schedule["total_steps"]) == (2, 8)


@pytest.mark.slow
def test_files_that_fail_to_decode_are_replaced_counted_and_stop_the_run_past_the_limit(tmp_path):
    import io

    from PIL import Image

    from mvq.data.images import SkippedFilesWarning
    from mvq.training.callbacks import TooManyUnreadableFiles
    from mvq.training.run import train
    from tests.train_helpers import tiny_stage1_config

    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(5):
        Image.new("RGB", (40, 40), (40 * i, 90, 200 - 30 * i)).save(folder / f"{i}.png")
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 200, 10)).save(buffer, format="JPEG")
    (folder / "bad.jpg").write_bytes(buffer.getvalue()[:300])  # listed by name, fails when read
    data = {"dataset": "folder", "root": str(folder), "batch_size": 2, "num_workers": 0}
    config = tiny_stage1_config(tmp_path, data=data, trainer={"max_steps": 6, "val_check_interval": 3},
                                run={"image_every_n_steps": 0})
    with pytest.warns(SkippedFilesWarning, match=r"1 training file\(s\) could not be read.*bad.jpg"):
        run = train(str(config), [], run_dir=str(tmp_path / "run"))
    logged = (run / "unreadable_files.tsv").read_text().splitlines()
    assert logged and all(line.startswith(str(folder / "bad.jpg") + "\t") for line in logged)

    strict = tiny_stage1_config(tmp_path, data={**data, "max_unreadable_files": 0},
                                trainer={"max_steps": 6, "val_check_interval": 3}, run={"image_every_n_steps": 0})
    with pytest.raises(TooManyUnreadableFiles, match=r"more than data.max_unreadable_files=0"):
        train(str(strict), [], run_dir=str(tmp_path / "strict"))
