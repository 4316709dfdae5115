"""Starting, resuming and exporting training runs (one folder per run, see `run_folder`).

`train` validates everything first (config, run folder, lock), then fits; checkpoints are
written and read as `mvq.training.checkpoints` describes. `export` turns a run's checkpoint
into a pretrained folder.
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from mvq.storage.atomic import atomic_directory, check_writable_destination
from mvq.config import ConfigError
from mvq.distributed import check_accelerator
from mvq.errors import UserError
from mvq.models.pretrained import describe_names, non_finite_tensors, write_tokenizer_record
from mvq.models.stackformer import Stackformer
from mvq.models.tokenizer import build_tokenizer
from mvq.training.callbacks import ReconstructionGrids, StopOnNonFiniteLoss, UnreadableFilesReport
from mvq.training.checkpoints import (AtomicCheckpointIO, CtrlCSavesCheckpoint, LastCheckpoint, best_checkpoint,
                                      check_stage, checkpoint_path, model_weights, read_checkpoint)
from mvq.training.config import Stage1Config, TrainingConfig, load_training_config
from mvq.training.datamodule import ImageDataModule
from mvq.training.run_folder import (CONFIG_NAME, SaveConfigAtStart, check_run_dir, is_launcher, locked,
                                     remove_interrupted_writes)
from mvq.training.stage1 import TokenizerTraining
from mvq.training.stage2 import StackformerTraining, TokenDataModule

# Where a run names the training files that failed to decode when read (one line each: path, tab, reason).
UNREADABLE_FILES = "unreadable_files.tsv"

# The run folder a launching `mvq train` hands to the processes a multi-device launcher starts for it.
RUN_DIR_ENV = "MVQ_RUN_DIR"
RANK_VARIABLES = ("LOCAL_RANK", "NODE_RANK", "RANK")


def _default_run_dir(config_path: str | Path) -> Path:
    return Path("runs") / f"{Path(config_path).stem}-{time.strftime('%Y%m%d-%H%M%S')}"


def launched_run_dir() -> Path | None:
    """The run folder the launching `mvq train` chose, in a process a multi-device launcher started for it.

    Trusted only there (a rank variable set, and not global rank 0 of node 0): anywhere else a
    stray MVQ_RUN_DIR in the user's shell must not replace --run-dir, nor skip the refusal of an
    existing run or the folder's lock.
    """
    folder = os.environ.get(RUN_DIR_ENV)
    if folder and any(name in os.environ for name in RANK_VARIABLES) and not is_launcher():
        return Path(folder)
    return None


@dataclass
class PreparedRun:
    """Everything `train` needs, resolved and validated before any work: where, what, and from which checkpoint."""

    folder: Path
    raw: dict  # the resolved config, saved as config.yaml once training starts
    config: TrainingConfig
    resume_from: Path | None  # last.ckpt of a resumed run


def prepare_run(config_path: str | None, overrides: list[str], run_dir: str | None, resume: str | None,
                data_path: str | None) -> PreparedRun:
    """Resolve and validate everything before any work; writes nothing."""
    if resume:
        folder = check_run_dir(Path(resume), "--resume")
        saved = folder / CONFIG_NAME
        if not saved.is_file():
            raise UserError(f"--resume {folder}: not a run folder (no {CONFIG_NAME} in it)")
        checkpoint = checkpoint_path(folder)
        if not checkpoint.is_file():
            raise UserError(f"--resume {folder}: no checkpoints/last.ckpt to resume from")
        raw, config = load_training_config(saved, overrides, data_folder=data_path)
        return PreparedRun(folder, raw, config, checkpoint)
    if not config_path:
        raise ConfigError("give a config file (mvq train CONFIG) or --resume RUN_DIR")
    raw, config = load_training_config(config_path, overrides, data_folder=data_path)
    folder = check_run_dir(launched_run_dir() or Path(run_dir or _default_run_dir(config_path)), "--run-dir")
    _refuse_existing_run(folder)
    return PreparedRun(folder, raw, config, None)


def _refuse_existing_run(folder: Path) -> None:
    if checkpoint_path(folder).exists() and launched_run_dir() is None:  # a launched process: its launcher checked
        raise UserError(f"{folder} already holds a run; continue it with --resume {folder} "
                        "or choose another --run-dir")


def train(config_path: str | None = None, overrides: list[str] | None = None, run_dir: str | None = None,
          resume: str | None = None, data_path: str | None = None) -> Path:
    """Train stage 1 or stage 2 (chosen by the config) and return the run folder."""
    run = prepare_run(config_path, overrides or [], run_dir, resume, data_path)
    accelerator = str(run.config.trainer.get("accelerator", "auto"))
    check_accelerator(accelerator, f"trainer.accelerator={accelerator}", "trainer.accelerator=cpu (or auto)")
    if not is_launcher():  # the launching process holds the folder's lock
        return _fit(run)
    with locked(run.folder):
        if not run.resume_from:
            _refuse_existing_run(run.folder)  # again: another run may have finished while we validated
        remove_interrupted_writes(run.folder)
        return _fit(run)


def _fit(run: PreparedRun) -> Path:
    import lightning as L
    from lightning.pytorch.callbacks import TQDMProgressBar
    from lightning.pytorch.loggers import TensorBoardLogger
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    folder, config = run.folder, run.config
    # Our checkpoints deliberately hold the state after the optimizer step (that is what resuming needs).
    warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")
    # A resumed run continues mid-epoch at the next sample: the data module restores that position itself
    # (ResumableDataModule), so Lightning's warning that the loader cannot resume is not true here.
    warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch ended")
    # The frozen networks inside a training module (LPIPS's VGG16) stay in eval mode on purpose.
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")
    L.seed_everything(config.run.seed, workers=True, verbose=False)

    if isinstance(config, Stage1Config):
        module = TokenizerTraining(config)
        unreadable = folder / UNREADABLE_FILES
        datamodule = ImageDataModule(config.data, seed=config.run.seed, failure_log=unreadable)
        extra = [ReconstructionGrids(config.run.image_every_n_steps, config.run.num_log_images, folder / "images"),
                 UnreadableFilesReport(unreadable, config.data.max_unreadable_files)]
        monitor = "val/rec_loss"
        # Generator and discriminator each take their own backward pass, and the discriminator is idle
        # before disc_start: data-parallel gradient sync must allow parameters unused by a pass.
        if str(config.trainer.get("strategy", "auto")) in ("auto", "ddp"):
            config.trainer["strategy"] = "ddp_find_unused_parameters_true" if _multi_device(config.trainer) else "auto"
    else:
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
        callbacks=[SaveConfigAtStart(folder, run.raw),
                   LastCheckpoint(checkpoints, config.run.checkpoint_every_n_steps),
                   best_checkpoint(checkpoints, monitor), StopOnNonFiniteLoss(checkpoints), *extra,
                   *([TQDMProgressBar(refresh_rate=1)] if config.trainer.get("enable_progress_bar", True) else [])],
        plugins=[AtomicCheckpointIO()],
        use_distributed_sampler=False,
        deterministic=config.run.deterministic,
        **trainer_args,
    )
    previous = os.environ.get(RUN_DIR_ENV)
    os.environ[RUN_DIR_ENV] = str(folder)  # processes a multi-device launcher starts inherit it
    try:
        with CtrlCSavesCheckpoint() as signals:
            trainer.fit(module, datamodule=datamodule, ckpt_path=str(run.resume_from) if run.resume_from else None)
    except SIGTERMException:
        raise TrainingInterrupted(folder, signals.received or "SIGTERM") from None
    finally:
        if previous is None:
            os.environ.pop(RUN_DIR_ENV, None)
        else:
            os.environ[RUN_DIR_ENV] = previous
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
    """The run stopped on SIGTERM or Ctrl-C after writing checkpoints/last.ckpt."""

    def __init__(self, folder: Path, signal_name: str = "SIGTERM"):
        super().__init__(f"stopped by {signal_name}; the state is saved in {folder}/checkpoints/last.ckpt — "
                         f"continue with: mvq train --resume {folder}")
        self.folder = folder
        self.exit_code = 130 if "SIGINT" in signal_name else 143


def export(run_dir: str | Path, out_dir: str | Path, which: str = "last", overrides: list[str] | None = None,
           overwrite: bool = False) -> Path:
    """Write a run's trained model as a pretrained folder, atomically as a whole.

    config.json + model.safetensors, and for a Stackformer tokenizer.json (the MQ-VAE its
    tokens came from). `overrides` change the run's saved config (e.g. a moved `vae=PATH`).
    A non-empty `out_dir` is refused unless `overwrite`.
    """
    run_dir = check_run_dir(Path(run_dir), "run folder")
    path = checkpoint_path(run_dir, which)
    if not path.is_file():
        raise UserError(f"{path} not found (is {run_dir} a run folder? checkpoints are 'last' and 'best')")
    check_writable_destination(out_dir, overwrite, inputs=[run_dir])
    try:  # the run's own record: no tokenizer folder or token store is opened
        _, config = load_training_config(run_dir / CONFIG_NAME, overrides, resolve=False)
    except ConfigError:  # a config saved by an older mvq records no geometry: resolve it from the files
        _, config = load_training_config(run_dir / CONFIG_NAME, overrides)
    checkpoint = read_checkpoint(path)
    stage = 1 if isinstance(config, Stage1Config) else 2
    check_stage(checkpoint, stage, str(path))
    if stage == 1:
        model = build_tokenizer(config.model)
    else:
        model = Stackformer(config.model)
    try:
        missing, unexpected = model.load_state_dict(model_weights(checkpoint), strict=False)
    except RuntimeError as exc:  # shapes differ
        missing, unexpected = [str(exc).splitlines()[1].strip() if "\n" in str(exc) else str(exc)], []
    if missing or unexpected:
        raise UserError(f"{path} does not match {run_dir / CONFIG_NAME} (missing {missing[:3]}, unexpected "
                        f"{unexpected[:3]}); export with the overrides the run was trained with")
    broken = non_finite_tensors(model.state_dict())
    if broken:
        raise UserError(f"{path} holds NaN or infinite weights in {len(broken)} of {len(model.state_dict())} "
                        f"tensors ({describe_names(broken)}): the run diverged; export an earlier checkpoint "
                        "(--checkpoint best) or train again with a lower optim.lr")
    tokenizer = checkpoint["mvq_state"].get("tokenizer")
    with atomic_directory(out_dir, overwrite=overwrite, inputs=[run_dir]) as tmp:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            write_tokenizer_record(tmp, tokenizer)
    return Path(out_dir)
