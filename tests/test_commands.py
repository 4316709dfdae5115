import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

from mvq.cli import COMMANDS, build_parser, main, parse_arguments
from mvq.config import ConfigError
from mvq.convert.train_args import translate
from mvq.models.mqvae import MQVAE
from tests.conftest import TINY_MQVAE, reference_path

ROOT = Path(__file__).resolve().parents[1]


class _MakesFolderWhenUnpickled:
    """Stands for a crafted pickle: unpickling it calls os.mkdir (any callable would do)."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return os.mkdir, (self.path,)


def _reference_mqvae_files(tmp_path: Path, **extra) -> tuple[Path, Path]:
    meta = json.loads(reference_path("mqvae_small.json").read_text())
    ref = meta["reference_config"]
    config = {"model": {"target": "models.stage1_masked.mqvae.MaskedVectorQuantizationModel", "params": {
        "encoder_config": {"params": ref["encoder"]}, "decoder_config": {"params": ref["decoder"]},
        "masker_config": {"params": ref["masker"]}, "demasker_config": {"params": ref["demasker"]},
        "vqconfig": {"params": ref["vq"]}}}}
    (tmp_path / "ref.yml").write_text(yaml.safe_dump(config))
    torch.save({"state_dict": load_file(reference_path("mqvae_small_state_dict.safetensors")), **extra},
               tmp_path / "ref.ckpt")
    return tmp_path / "ref.ckpt", tmp_path / "ref.yml"


def test_convert_original_mqvae_checkpoint(tmp_path):
    checkpoint, config = _reference_mqvae_files(tmp_path, epoch=3)
    with pytest.raises(SystemExit) as done:
        main(["convert-original", str(checkpoint), "--config", str(config), "--out", str(tmp_path / "vae")])
    assert done.value.code == 0
    model = MQVAE.from_pretrained(tmp_path / "vae")
    io = load_file(reference_path("mqvae_small_io.safetensors"))
    with torch.no_grad():
        out = model(io["images"])
    assert torch.equal(out.positions, io["positions"]) and torch.equal(out.codes, io["codes"])
    torch.testing.assert_close(out.reconstruction, io["reconstruction"], atol=1e-4, rtol=0)


def test_convert_original_refuses_a_checkpoint_that_would_run_code(tmp_path, capsys):
    marker = tmp_path / "code_ran"
    checkpoint, config = _reference_mqvae_files(tmp_path, hyper_parameters=_MakesFolderWhenUnpickled(str(marker)))
    with pytest.raises(SystemExit) as done:
        main(["convert-original", str(checkpoint), "--config", str(config), "--out", str(tmp_path / "vae")])
    assert done.value.code == 1 and not marker.exists() and not (tmp_path / "vae").exists()
    err = capsys.readouterr().err
    assert "posix.mkdir" in err and "refused" in err and len(err.strip().splitlines()) == 1


class _RecordsConstruction:
    """A class whose construction or state restore, if it ever ran, leaves a file behind."""

    def __init__(self, path: str):
        self.path = path

    def __setstate__(self, state):
        Path(state["path"]).write_text("ran")


def test_convert_original_converts_a_checkpoint_with_other_objects_without_running_them(tmp_path):
    marker = tmp_path / "code_ran"
    checkpoint, config = _reference_mqvae_files(
        tmp_path, hyper_parameters=argparse.Namespace(lr=4.5e-6, note=_RecordsConstruction(str(marker))),
        callbacks={"when": Path("/x")})
    with pytest.raises(SystemExit) as done:
        main(["convert-original", str(checkpoint), "--config", str(config), "--out", str(tmp_path / "vae")])
    assert done.value.code == 0 and not marker.exists()
    model = MQVAE.from_pretrained(tmp_path / "vae")
    reference = load_file(reference_path("mqvae_small_state_dict.safetensors"))
    assert torch.equal(model.state_dict()["encoder.conv_in.weight"], reference["encoder.conv_in.weight"])


def test_convert_original_refuses_an_old_format_pickle_in_one_line(tmp_path, capsys):
    checkpoint, config = _reference_mqvae_files(tmp_path)
    torch.save(torch.load(checkpoint, weights_only=True), checkpoint, _use_new_zipfile_serialization=False)
    with pytest.raises(SystemExit) as done:
        main(["convert-original", str(checkpoint), "--config", str(config), "--out", str(tmp_path / "vae")])
    err = capsys.readouterr().err
    assert done.value.code == 1 and "re-save" in err and len(err.strip().splitlines()) == 1


def test_convert_original_replaces_the_output_folder_only_when_asked(tmp_path, capsys):
    checkpoint, config = _reference_mqvae_files(tmp_path)
    out = tmp_path / "vae"
    out.mkdir()
    (out / "discriminator.safetensors").write_text("from an earlier conversion")
    command = ["convert-original", str(checkpoint), "--config", str(config), "--out", str(out)]
    with pytest.raises(SystemExit) as done:
        main(command)
    assert done.value.code == 1 and "--overwrite" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["discriminator.safetensors"]
    with pytest.raises(SystemExit) as done:
        main([*command, "--overwrite"])
    assert done.value.code == 0
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_reconstruct_writes_overlays(tmp_path):
    model = MQVAE.from_config(TINY_MQVAE)
    model.save_pretrained(tmp_path / "vae")
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(images / f"im{i}.png")
    (images / "notes.txt").write_text("not an image")
    with pytest.raises(SystemExit) as done:
        main(["reconstruct", "--vae", str(tmp_path / "vae"), str(images), "--out", str(tmp_path / "out"),
              "--batch-size", "2"])
    assert done.value.code == 0
    for i in range(3):
        for kind in ["reconstruction", "keep_mask", "scores"]:
            with Image.open(tmp_path / "out" / f"im{i}_{kind}.png") as im:
                assert im.size == (32, 32)
    with Image.open(tmp_path / "out" / "grid.png") as grid:
        assert grid.size[0] > 3 * 32 and grid.size[1] > 4 * 32


def test_train_py_translates_the_authors_commands():
    args = translate("--gpus -1 --base configs/stage1/mqvae_imagenet_f8_r25.yml --max_epochs 50".split(),
                     gpu_available=True)
    assert args == ["train", "configs/stage1/mqvae_imagenet_f8_r25.yaml", "trainer.accelerator=gpu",
                    "trainer.devices=-1", "trainer.max_epochs=50"]
    args = translate(["--base", "configs/stage1/mqvae_imagenet_f8_r30.yml", "--gpus", "0,1,",
                      "model.params.masker_config.params.topk_ratio=0.3"], gpu_available=True)
    assert "trainer.devices=[0,1]" in args and "model.keep_ratio=0.3" in args
    # Lightning 1.x's "0," is GPU index 0, "0" is the CPU; overrides may sit anywhere, even right after --base.
    assert translate(["--gpus", "0,", "--base", "configs/stage1/mqvae_small.yml"], gpu_available=True)[2:] == [
        "trainer.accelerator=gpu", "trainer.devices=[0]"]
    args = translate(["--base", "configs/stage1/mqvae_small.yml", "a.b=1", "--gpus", "0", "-l", "LOGS", "c.d=2"],
                     gpu_available=False)
    assert args == ["train", "configs/stage1/mqvae_small.yaml", "--run-dir", "LOGS", "trainer.accelerator=cpu",
                    "a.b=1", "c.d=2"]


@pytest.mark.slow
def test_train_py_runs_as_written_up_to_the_data(tmp_path):
    # The authors' README command reaches the dataset check: ImageNet's root has to be given.
    result = subprocess.run([sys.executable, str(ROOT / "train.py"), "--gpus", "0", "--base",
                             "configs/stage1/mqvae_imagenet_f8_r25.yml", "--max_epochs", "50"],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 1
    assert "data.root" in result.stderr and "Traceback" not in result.stderr


def test_train_py_without_a_gpu_says_so_in_one_line():
    result = subprocess.run([sys.executable, str(ROOT / "train.py"), "--gpus", "-1", "--base",
                             "configs/stage1/mqvae_imagenet_f8_r25.yml", "--max_epochs", "50"],
                            cwd=ROOT, capture_output=True, text=True, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "no usable GPU" in result.stderr and "--gpus 0" in result.stderr


def _image_folder(root: Path, classes: int, per_class: int, size: int = 40) -> Path:
    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"n{c:08d}").mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (size, size + 8, 3), dtype=np.uint8)).save(
                root / f"n{c:08d}" / f"{i}.png")
    return root


TINY_MODEL_OVERRIDES = ["model.resolution=32", "model.ch=32", "model.ch_mult=[1,2,2]", "model.num_res_blocks=1",
                        "model.attn_resolutions=[8]", "model.z_channels=64", "model.codebook_size=64",
                        "model.codebook_dim=16", "model.demask_layers=2", "data.resolution=32", "data.batch_size=2",
                        "data.num_workers=0", "loss.perceptual_weight=0", "trainer.max_steps=1",
                        "trainer.num_sanity_val_steps=0", "trainer.limit_val_batches=1",
                        "trainer.enable_model_summary=false", "run.image_every_n_steps=1000"]


@pytest.mark.slow
def test_the_authors_readme_command_lines_train_one_step_through_train_py(tmp_path):
    """The authors' README's stage-1 command lines, as written apart from --gpus 0 and tiny-size overrides."""
    imagenet = tmp_path / "ImageNet"
    _image_folder(imagenet / "train", classes=2, per_class=2)
    _image_folder(imagenet / "val", classes=2, per_class=1)
    folder = _image_folder(tmp_path / "photos", classes=1, per_class=3)
    commands = [
        ["--gpus", "0", "--base", "configs/stage1/mqvae_imagenet_f8_r25.yml", "--max_epochs", "50",
         f"data.root={imagenet}", *TINY_MODEL_OVERRIDES, "-l", str(tmp_path / "imagenet_run")],
        # The paper's README form: options, then -l, then overrides; also the reference's topk_ratio key.
        ["--gpus", "0", "--base", "configs/stage1/mqvae_small.yml", "--max_epochs", "50", "-l",
         str(tmp_path / "small_run"), "data.dataset=folder", f"data.root={folder}", *TINY_MODEL_OVERRIDES,
         "model.params.masker_config.params.topk_ratio=0.5"],
    ]
    for command in commands:
        result = subprocess.run([sys.executable, str(ROOT / "train.py"), *command], cwd=ROOT, capture_output=True,
                                text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
    for run, keep in [("imagenet_run", 0.25), ("small_run", 0.5)]:
        saved = yaml.safe_load((tmp_path / run / "config.yaml").read_text())
        assert saved["trainer"]["max_epochs"] == 50 and saved["trainer"]["max_steps"] == 1
        assert saved["trainer"]["accelerator"] == "cpu" and saved["model"]["keep_ratio"] == keep
        assert (tmp_path / run / "checkpoints" / "last.ckpt").is_file()


def test_train_overrides_are_accepted_anywhere_on_the_line():
    parser = build_parser()
    args = parse_arguments(parser, ["train", "cfg.yaml", "a=1", "--data", "DIR", "b=2", "--run-dir", "RUN", "c=3"])
    assert (args.config, args.overrides, args.data, args.run_dir) == ("cfg.yaml", ["a=1", "b=2", "c=3"], "DIR", "RUN")
    args = parse_arguments(parser, ["train", "--data", "DIR", "cfg.yaml", "trainer.max_steps=10"])
    assert (args.config, args.overrides) == ("cfg.yaml", ["trainer.max_steps=10"])
    with pytest.raises(SystemExit) as done:  # unknown options are still refused
        parse_arguments(parser, ["train", "cfg.yaml", "--no-such-option", "a=1"])
    assert done.value.code == 2
    with pytest.raises(SystemExit) as done:  # and a command without overrides takes none
        parse_arguments(parser, ["convert-original", "CKPT", "--config", "Y", "--out", "OUT", "a=1"])
    assert done.value.code == 2


@pytest.mark.slow
def test_train_override_after_options_reaches_the_config(tmp_path, capsys):
    from tests.train_helpers import tiny_stage1_config

    with pytest.raises(SystemExit) as done:
        main(["train", str(tiny_stage1_config(tmp_path)), "--run-dir", str(tmp_path / "run"), "model.codebook_size=0"])
    assert done.value.code == 1
    err = capsys.readouterr().err
    assert "model.codebook_size must be at least 1" in err and len(err.strip().splitlines()) == 1


def _subcommand_paths(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                paths.append(prefix + (name,))
                paths += _subcommand_paths(sub, prefix + (name,))
    return paths


def test_every_command_prints_its_help(capsys):
    paths = _subcommand_paths(build_parser())
    assert {(name.replace("_", "-"),) for name in COMMANDS} <= set(paths)
    for path in paths:
        with pytest.raises(SystemExit) as done:
            main([*path, "--help"])
        assert done.value.code == 0, path
        out = capsys.readouterr().out
        assert out.startswith(f"usage: mvq {' '.join(path)}"), (path, out[:200])


def test_cli_help_lists_commands():
    result = subprocess.run([sys.executable, "-m", "mvq.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    assert len(COMMANDS) >= 11
    for name in COMMANDS:
        assert name.replace("_", "-") in result.stdout, name


def test_a_command_module_that_fails_to_import_is_an_error(monkeypatch):
    import mvq.cli

    monkeypatch.setattr(mvq.cli, "COMMANDS", [*mvq.cli.COMMANDS, "no_such_command"])
    with pytest.raises(ModuleNotFoundError, match="no_such_command"):
        build_parser()


@pytest.mark.parametrize("kind", ["class", "uncond"])
def test_convert_original_stackformer_checkpoint(tmp_path, kind):
    from mvq.models.stackformer import Stackformer

    meta = json.loads(reference_path(f"stackformer_{kind}_tiny.json").read_text())
    ref = meta["reference_config"]
    transformer = {k: ref[k] for k in ("vocab_size", "position_size", "block_size", "position_layer", "value_layer",
                                       "n_head", "n_embd", "add_absolute_position")}
    params = {"transformer_config": {"params": transformer},
              "first_stage_config": {"params": {
                  "masker_config": {"params": {"topk_ratio": ref["kept"] / ref["grid"] ** 2,
                                               "input_token_num": ref["grid"] ** 2}},
                  "vqconfig": {"params": {"codebook_size": ref["codebook_size"]}}}}}
    target = "models.stage2_masked.stackformer_uncond.ReverseStackformer"
    if kind == "class":
        params["n_classes"] = ref["n_classes"]
        target = "models.stage2_masked.stackformer_class.ClassTransformer"
    (tmp_path / "ref.yml").write_text(yaml.safe_dump({"model": {"target": target, "params": params}}))
    state = load_file(reference_path(f"stackformer_{kind}_tiny_state_dict.safetensors"))
    torch.save({"state_dict": {f"transformer.{k}": v for k, v in state.items()}}, tmp_path / "ref.ckpt")
    with pytest.raises(SystemExit) as done:
        main(["convert-original", str(tmp_path / "ref.ckpt"), "--config", str(tmp_path / "ref.yml"),
              "--out", str(tmp_path / "sf")])
    assert done.value.code == 0
    model = Stackformer.from_pretrained(tmp_path / "sf")
    io = load_file(reference_path(f"stackformer_{kind}_tiny_io.safetensors"))
    with torch.no_grad():
        out = model(io["codes"], io["positions"], io.get("labels"))
    torch.testing.assert_close(out.code_loss, io["code_loss"].reshape(()), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.position_loss, io["position_loss"].reshape(()), atol=1e-5, rtol=0)


def test_a_gpu_is_what_lightnings_gpu_accelerator_uses_for_train_py_and_mvq_train(monkeypatch):
    """An Apple MPS device counts as a GPU for `--gpus` and for trainer.accelerator=gpu alike; CUDA only for cuda."""
    from mvq.distributed import check_accelerator, gpu_available
    from mvq.errors import UserError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert gpu_available()
    assert translate(["--gpus", "1", "--base", "configs/stage1/mqvae_small.yml"])[2:] == [
        "trainer.accelerator=gpu", "trainer.devices=1"]
    check_accelerator("gpu", "trainer.accelerator=gpu", "trainer.accelerator=cpu")  # accepted, like --gpus 1
    with pytest.raises(UserError, match="no usable GPU.*CUDA GPU.*trainer.accelerator=cpu"):
        check_accelerator("cuda", "trainer.accelerator=cuda", "trainer.accelerator=cpu")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert not gpu_available()
    with pytest.raises(UserError, match="--gpus 1: this machine has no usable GPU.*--gpus 0"):
        translate(["--gpus", "1", "--base", "configs/stage1/mqvae_small.yml"])
    with pytest.raises(UserError, match="no usable GPU"):
        check_accelerator("gpu", "trainer.accelerator=gpu", "trainer.accelerator=cpu")


def test_only_input_errors_are_one_line_a_librarys_value_error_keeps_its_traceback(monkeypatch, capsys):
    import mvq.commands.export as export_command
    from mvq.errors import InvalidInputError
    from mvq.evaluation.frechet import frechet_distance

    def fails_with(error):
        def run(args):
            raise error
        return run

    command = ["export", "RUN", "OUT"]
    monkeypatch.setattr(export_command, "run", fails_with(InvalidInputError("the run is not usable; fix it")))
    with pytest.raises(SystemExit) as done:
        main(command)
    assert done.value.code == 1 and capsys.readouterr().err == "mvq export: error: the run is not usable; fix it\n"
    # Statistics that do not fit each other are the user's input (a reference file): one line.
    monkeypatch.setattr(export_command, "run", lambda args: frechet_distance([0.0, 0.0], np.eye(2), [0.0], np.eye(1)))
    with pytest.raises(SystemExit) as done:
        main(command)
    assert done.value.code == 1 and "means must be vectors of the same length" in capsys.readouterr().err
    # The same types raised by a library (here numpy) or outside mvq are bugs: they keep their traceback.
    monkeypatch.setattr(export_command, "run", lambda args: np.zeros(2).reshape(3))
    with pytest.raises(ValueError, match="reshape"):
        main(command)
    monkeypatch.setattr(export_command, "run", fails_with(FileNotFoundError("not mvq's message")))
    with pytest.raises(FileNotFoundError):
        main(command)
    # A plain ValueError from mvq's own code is a programming error too: only UserError is one line.
    from mvq.data.token_store import shard_bounds

    monkeypatch.setattr(export_command, "run", lambda args: shard_bounds(4, rank=2, world_size=2))
    with pytest.raises(ValueError, match="outside world size"):
        main(command)


def _reference_stage1_yaml(tmp_path: Path) -> Path:
    """A reference-layout stage-1 YAML (the small parity fixture's model) with a loss, lr and data section."""
    ref = json.loads(reference_path("mqvae_small.json").read_text())["reference_config"]
    config = {"model": {"base_learning_rate": 4.5e-6, "target": "models.stage1_masked.mqvae.MaskedVectorQuantizationModel",
                        "params": {"encoder_config": {"params": ref["encoder"]}, "decoder_config": {"params": ref["decoder"]},
                                   "masker_config": {"params": ref["masker"]}, "demasker_config": {"params": ref["demasker"]},
                                   "vqconfig": {"params": ref["vq"]},
                                   "lossconfig": {"target": "x.VQLPIPSWithDiscriminator",
                                                  "params": {"disc_start": 250001, "disc_weight": 0.8, "codebook_weight": 1.0,
                                                             "disc_conditional": False}}}},
              "data": {"target": "main.DataModuleFromConfig",
                       "params": {"batch_size": 3, "num_workers": 2,
                                  "train": {"target": "data.imagenet.ImageNetTrain", "params": {"size": 32}}}}}
    path = tmp_path / "reference_stage1.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_convert_config_writes_the_mvq_config_of_a_reference_config(tmp_path, capsys):
    from mvq.convert.mqvae import config_from_original
    from mvq.training.config import load_training_config

    reference = _reference_stage1_yaml(tmp_path)
    out = tmp_path / "ours.yaml"
    with pytest.raises(SystemExit) as done:
        main(["convert-config", str(reference), "--out", str(out)])
    assert done.value.code == 0
    converted = yaml.safe_load(out.read_text())
    assert converted["model"] == config_from_original(yaml.safe_load(reference.read_text())["model"])
    assert converted["loss"] == {"disc_start": 250001, "disc_weight": 0.8, "codebook_weight": 1.0}
    assert converted["optim"] == {"base_lr": 4.5e-6}
    assert converted["data"] == {"batch_size": 3, "num_workers": 2, "dataset": "imagenet"}
    _, parsed = load_training_config(out, ["data.root=/nowhere"])  # parses as an mvq config (no file read)
    assert parsed.model.keep_ratio == 0.25 and parsed.loss.disc_start == 250001
    # Nothing is overwritten unasked; an mvq config needs no conversion.
    with pytest.raises(SystemExit) as done:
        main(["convert-config", str(reference), "--out", str(out)])
    assert done.value.code == 1 and "--overwrite" in capsys.readouterr().err
    with pytest.raises(SystemExit) as done:
        main(["convert-config", str(out), "--out", str(tmp_path / "again.yaml")])
    assert done.value.code != 0 and "needs no conversion" in capsys.readouterr().err


def test_train_py_converts_a_reference_config_and_renames_reference_keys(tmp_path):
    from mvq.training.config import load_training_config

    args = translate(["--base", str(_reference_stage1_yaml(tmp_path)), "--gpus", "0", "model.topk_ratio=0.5"])
    converted = Path(args[1])
    assert converted.suffix == ".yaml" and converted.parent != tmp_path  # converted into a file of its own
    assert "model.keep_ratio=0.5" in args
    _, parsed = load_training_config(converted, [a for a in args[2:] if "=" in a] + ["data.root=/nowhere"])
    assert parsed.model.keep_ratio == 0.5
    # `mvq train` itself takes mvq's key names only, and says which ones to use.
    with pytest.raises(ConfigError, match="model.topk_ratio → model.keep_ratio"):
        load_training_config(converted, ["model.topk_ratio=0.5"])


@pytest.mark.parametrize("cpus, workers", [(2, 2), (1, 1), (None, 1), (16, 4)])
def test_data_loading_processes_default_to_at_most_one_per_cpu(monkeypatch, cpus, workers):
    """More loader processes than CPUs only wait on each other (and torch warns on every run)."""
    monkeypatch.setattr(os, "cpu_count", lambda: cpus)
    parser = build_parser()
    for argv in (["eval", "recon", "--vae", "V", "--data", "D"], ["tokenize", "--vae", "V", "--data", "D", "--out", "O"]):
        assert parse_arguments(parser, argv).num_workers == workers, argv
    assert parse_arguments(parser, ["eval", "recon", "--vae", "V", "--data", "D", "--num-workers", "3"]).num_workers == 3
