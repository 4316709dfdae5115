"""Starting, resuming and exporting training runs (one folder per run, design §3.5).

A run folder holds `config.yaml` (the resolved config), `checkpoints/last.ckpt` and
`checkpoints/best.ckpt` (full training state), TensorBoard logs under `logs/` and image
grids under `images/`.
"""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path

from mvq.config import ConfigError, apply_overrides, load_yaml

RUN_DIR_ENV = "MVQ_RUN_DIR"  # lets processes started by a multi-device launcher find the same run folder


def _default_run_dir(config_path: str | Path) -> Path:
    return Path("runs") / f"{Path(config_path).stem}-{time.strftime('%Y%m%d-%H%M%S')}"


def _use_data_folder(raw: dict, data_path: str) -> dict:
    from mvq.training.config import config_stage

    if config_stage(raw) == 2:
        raise ConfigError("--data takes an image folder for stage 1; stage 2 reads a token store "
                          "(make one with mvq tokenize, then pass data.tokens=STORE)")
    if not Path(data_path).is_dir():
        raise FileNotFoundError(f"--data {data_path}: no such folder")
    data = dict(raw.get("data") or {})
    data.update(dataset="folder", root=str(Path(data_path).resolve()))
    return {**raw, "data": data}


def prepare_run(config_path: str | None, overrides: list[str], run_dir: str | None, resume: str | None,
                data_path: str | None) -> tuple[Path, dict, object, Path | None]:
    """Resolve and validate everything before any work: (run folder, raw config, parsed config, checkpoint)."""
    from mvq.training.config import parse_training_config, reject_reference_layout

    if resume:
        folder = Path(resume)
        saved = folder / "config.yaml"
        if not saved.is_file():
            raise FileNotFoundError(f"--resume {folder}: not a run folder (no config.yaml in it)")
        checkpoint = folder / "checkpoints" / "last.ckpt"
        if not checkpoint.is_file():
            raise FileNotFoundError(f"--resume {folder}: no checkpoints/last.ckpt to resume from")
        raw = apply_overrides(load_yaml(saved), overrides)
        if data_path:
            raw = _use_data_folder(raw, data_path)
        return folder, raw, parse_training_config(raw), checkpoint
    if not config_path:
        raise ConfigError("give a config file (mvq train CONFIG) or --resume RUN_DIR")
    raw = load_yaml(config_path)
    reject_reference_layout(raw, config_path)
    raw = apply_overrides(raw, overrides)
    if data_path:
        raw = _use_data_folder(raw, data_path)
    parsed = parse_training_config(raw)
    folder = Path(os.environ.get(RUN_DIR_ENV) or run_dir or _default_run_dir(config_path))
    if (folder / "checkpoints" / "last.ckpt").exists() and RUN_DIR_ENV not in os.environ:
        raise FileExistsError(f"{folder} already holds a run; continue it with --resume {folder} "
                              "or choose another --run-dir")
    return folder, raw, parsed, None


def train(config_path: str | None = None, overrides: list[str] | None = None, run_dir: str | None = None,
          resume: str | None = None, data_path: str | None = None) -> Path:
    """Train stage 1 or stage 2 (chosen by the config) and return the run folder."""
    import lightning as L
    from lightning.pytorch.callbacks import TQDMProgressBar
    from lightning.pytorch.loggers import TensorBoardLogger
    from omegaconf import OmegaConf

    from mvq.training.callbacks import AtomicCheckpointIO, LastCheckpoint, ReconstructionGrids, best_checkpoint
    from mvq.training.config import Stage1Config

    folder, raw, config, checkpoint = prepare_run(config_path, overrides or [], run_dir, resume, data_path)
    # Our checkpoints deliberately hold the state after the optimizer step (that is what resuming needs).
    warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")
    if int(os.environ.get("LOCAL_RANK", 0)) == 0 and int(os.environ.get("NODE_RANK", 0)) == 0:
        folder.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(OmegaConf.create(raw), folder / "config.yaml")
    L.seed_everything(config.run.seed, workers=True, verbose=False)

    if isinstance(config, Stage1Config):
        from mvq.training.datamodule import ImageDataModule
        from mvq.training.stage1 import MQVAETraining

        module = MQVAETraining(config)
        datamodule = ImageDataModule(config.data, seed=config.run.seed)
        extra = [ReconstructionGrids(config.run.image_every_n_steps, config.run.num_log_images, folder / "images")]
        monitor = "val/rec_loss"
        # Generator and discriminator each take their own backward pass, and the discriminator is idle
        # before disc_start: data-parallel gradient sync must allow parameters unused by a pass.
        if str(config.trainer.get("strategy", "auto")) in ("auto", "ddp"):
            config.trainer["strategy"] = "ddp_find_unused_parameters_true" if _multi_device(config.trainer) else "auto"
    else:
        from mvq.training.stage2 import StackformerTraining, TokenDataModule

        module = StackformerTraining(config)
        datamodule = TokenDataModule(config.data, seed=config.run.seed)
        extra = module.callbacks(folder)
        monitor = "val/loss"
    if config.run.compile:
        module.model.compile()

    checkpoints = folder / "checkpoints"
    trainer_args = {"log_every_n_steps": 10, **config.trainer}
    trainer = L.Trainer(
        default_root_dir=folder,
        logger=TensorBoardLogger(save_dir=str(folder), name="logs", version=""),
        callbacks=[LastCheckpoint(checkpoints, config.run.checkpoint_every_n_steps),
                   best_checkpoint(checkpoints, monitor), *extra,
                   *([TQDMProgressBar(refresh_rate=1)] if config.trainer.get("enable_progress_bar", True) else [])],
        plugins=[AtomicCheckpointIO()],
        use_distributed_sampler=False,
        deterministic=config.run.deterministic,
        **trainer_args,
    )
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    launched_by_us = RUN_DIR_ENV not in os.environ
    os.environ[RUN_DIR_ENV] = str(folder)  # processes a multi-device launcher starts inherit it
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(checkpoint) if checkpoint else None)
    except SIGTERMException:
        raise TrainingInterrupted(folder) from None
    finally:
        if launched_by_us:
            os.environ.pop(RUN_DIR_ENV, None)
    return folder


def _multi_device(trainer: dict) -> bool:
    devices, nodes = trainer.get("devices", "auto"), int(trainer.get("num_nodes", 1))
    if nodes > 1 or str(trainer.get("strategy", "")) == "ddp":
        return True
    if isinstance(devices, (list, tuple)):
        return len(devices) > 1
    if str(devices) in ("auto", "-1"):
        import torch

        return torch.cuda.device_count() > 1 and trainer.get("accelerator", "auto") in ("auto", "gpu", "cuda")
    return int(devices) > 1


class TrainingInterrupted(Exception):
    """The run stopped on SIGTERM after writing checkpoints/last.ckpt."""

    def __init__(self, folder: Path):
        super().__init__(f"stopped by SIGTERM; the state is saved in {folder}/checkpoints/last.ckpt — "
                         f"continue with: mvq train --resume {folder}")
        self.folder = folder


def export(run_dir: str | Path, out_dir: str | Path, which: str = "last") -> Path:
    """Write the trained model of a run as a pretrained folder (config.json + model.safetensors)."""
    import torch

    from mvq.training.config import Stage1Config, parse_training_config

    run_dir = Path(run_dir)
    checkpoint_path = run_dir / "checkpoints" / f"{which}.ckpt"
    if not checkpoint_path.is_file():
        raise FileNotFoundError(f"{checkpoint_path} not found (is {run_dir} a run folder? "
                                f"checkpoints are 'last' and 'best')")
    config = parse_training_config(load_yaml(run_dir / "config.yaml"))
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
    state = {k[len("model."):]: v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}
    if isinstance(config, Stage1Config):
        from mvq.models.mqvae import MQVAE

        model = MQVAE(config.model)
    else:
        from mvq.training.stage2 import build_stackformer

        model = build_stackformer(config)
    model.load_state_dict(state, strict=True)
    return model.save_pretrained(out_dir)
