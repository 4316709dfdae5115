"""Checkpoints of a training run: when they are written, what they hold, how they are read.

This is where a checkpoint is written: `AtomicCheckpointIO.save_checkpoint`, asked by
`LastCheckpoint` and `best_checkpoint` (and on SIGTERM / Ctrl-C); `TrainingState` adds mvq's part.

When (all into RUN/checkpoints/, each written atomically: a temporary file, then a rename):

    last.ckpt   every `run.checkpoint_every_n_steps` optimizer steps, at the end of every epoch and
                of training, and when the run is stopped by SIGTERM or Ctrl-C (SIGINT): the batch
                in progress finishes, last.ckpt is written, the run exits saying how to resume
    best.ckpt   whenever validation reaches a new lowest val/rec_loss (stage 1) or val/loss (stage 2)

What (a dict written by torch.save and read back with weights_only=True, so only tensors and
plain containers, never code):

    checkpoint = {
        "state_dict": ...,             # model.* (MQ-VAE with its EMA codebook buffers, or Stackformer);
                                       # stage 1 also loss.discriminator.* (none if disc_start: null)
        "optimizer_states": [...],     # stage 1: [generator Adam, discriminator Adam (if any)]; stage 2: [AdamW]
        "lr_schedulers": [...],        # one warm-up + cosine LambdaLR state per optimizer
        "epoch": ..., "global_step": ...,  # optimizer steps taken (generator steps in stage 1)
        "loops": ..., "callbacks": ...,    # Lightning's loop progress and the best score so far
        "pytorch-lightning_version": ...,
        "mvq_state": {"stage": 1 or 2, "batches_trained": ..., "torch_rng": ..., "cuda_rng": ...,
                      "tokenizer": {"tokenizer_fingerprint": ..., "tokenizer_config": ...} or None},
    }

How they are read: `mvq train --resume RUN` hands last.ckpt to Lightning, which reads it
through `AtomicCheckpointIO.load_checkpoint` (= `read_checkpoint`); `TrainingState` then checks
that it belongs to this run's stage and model and restores the batch count, the RNGs and the
position in the epoch, so the resumed run continues exactly. `mvq export` reads the model's
weights and the tokenizer record with `read_checkpoint` and `model_weights`.
"""

from __future__ import annotations

import pickle
import signal
import threading
import zipfile
from pathlib import Path
from typing import Any, ClassVar

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint

from mvq.storage.atomic import atomic_write
from mvq.errors import UserError

LAST, BEST = "last", "best"


def _check_archive(path: str) -> None:
    """A checkpoint cut short on disk has no readable archive directory at its end: never give it a final name."""
    try:
        with zipfile.ZipFile(path) as archive:
            archive.infolist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise UserError(f"the checkpoint {path} was not written completely ({exc}); is the disk full? free some "
                        "space and resume the run") from exc


def checkpoint_path(run_dir: str | Path, which: str = LAST) -> Path:
    return Path(run_dir) / "checkpoints" / f"{which}.ckpt"


# ----------------------------------------------------------------------------- reading and writing


def read_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint of `mvq train` safely: tensors and plain containers only, one-line errors."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} not found")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UserError(f"{path} holds Python objects other than tensors and plain containers, so it was not "
                        f"written by mvq train; refusing to unpickle it (that could run code it carries)") from exc
    except (RuntimeError, EOFError, ValueError, zipfile.BadZipFile) as exc:
        raise UserError(f"{path} is truncated or corrupt ({str(exc).splitlines()[0]}); "
                        f"use another checkpoint (last.ckpt or best.ckpt) of the run") from exc
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "mvq_state" not in checkpoint:
        raise UserError(f"{path} is not a checkpoint written by mvq train (no model or training state in it)")
    return checkpoint


def check_stage(checkpoint: dict[str, Any], stage: int, where: str) -> None:
    """Refuse a stage-1 checkpoint for a stage-2 run and vice versa."""
    found = checkpoint["mvq_state"].get("stage")
    if found is not None and found != stage:
        what = {1: "an MQ-VAE (stage 1)", 2: "a Stackformer (stage 2)"}
        raise UserError(f"{where} holds {what.get(found, found)} checkpoint, but this is {what[stage]} run's "
                        f"config; use the run folder the checkpoint came from")


def model_weights(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The trained network's state dict (the `model.` entries, prefix removed)."""
    return {k[len("model."):]: v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO, writing atomically and reading with `read_checkpoint`.

    A run killed in the middle of a save leaves the previous checkpoint intact; its temporary
    file is removed at the next start of the run (`remove_stale_temporaries`).
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        atomic_write(path, lambda tmp: torch.save(checkpoint, tmp), verify=_check_archive)

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict[str, Any]:
        return read_checkpoint(path, map_location="cpu" if map_location is None else map_location)


# ----------------------------------------------------------------------------- when


class LastCheckpoint(ModelCheckpoint):
    """`last.ckpt` every N steps, at the end of every epoch and of training, and on SIGTERM / Ctrl-C.

    A stop signal is held back until the end of the training batch in progress: Lightning acts on
    one as soon as it is set (in validation, at the end of a step or of an epoch), and a signal that
    arrives after this callback's batch-end hook would otherwise stop the run with no last.ckpt.
    Here it is handed to Lightning's handler only once the exact state has been written.
    """

    def __init__(self, dirpath: Path, every_n_steps: int):
        super().__init__(dirpath=dirpath, filename=LAST, save_top_k=1, every_n_train_steps=every_n_steps,
                         save_on_train_epoch_end=True, enable_version_counter=False)
        self._stop_signal: int | None = None
        self._lightning_on_sigterm: Any = None

    def on_train_start(self, trainer: L.Trainer, pl_module) -> None:
        super().on_train_start(trainer, pl_module)
        if threading.current_thread() is threading.main_thread():
            self._lightning_on_sigterm = signal.getsignal(signal.SIGTERM)
            if callable(self._lightning_on_sigterm):
                signal.signal(signal.SIGTERM, self._hold_stop_signal)

    def _hold_stop_signal(self, signum: int, frame: Any) -> None:
        self._stop_signal = signum

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._stop_signal is not None and not trainer.received_sigterm:
            self._lightning_on_sigterm(self._stop_signal, None)  # Lightning stops right after this hook
        if trainer.received_sigterm:
            self._save_checkpoint(trainer, str(Path(self.dirpath) / f"{LAST}.ckpt"))
            return
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_train_end(self, trainer: L.Trainer, pl_module) -> None:
        self._save_checkpoint(trainer, str(Path(self.dirpath) / f"{LAST}.ckpt"))


def best_checkpoint(dirpath: Path, monitor: str) -> ModelCheckpoint:
    """`best.ckpt`: the lowest value of `monitor` seen at validation."""
    return ModelCheckpoint(dirpath=dirpath, filename=BEST, monitor=monitor, mode="min", save_top_k=1,
                           enable_version_counter=False, auto_insert_metric_name=False)


class CtrlCSavesCheckpoint:
    """While training: Ctrl-C (SIGINT) stops the run the way SIGTERM does, after writing last.ckpt.

    The first Ctrl-C is handed to Lightning's SIGTERM handler (which also stops the processes it
    launched); a second one interrupts at once. `received` names the signal that stopped the run.
    """

    def __init__(self) -> None:
        self.received: str | None = None
        self._previous: Any = None

    def __enter__(self) -> "CtrlCSavesCheckpoint":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._on_sigint)
        return self

    def _on_sigint(self, signum: int, frame: Any) -> None:
        on_sigterm = signal.getsignal(signal.SIGTERM)
        if not callable(on_sigterm):  # the training loop is not running: nothing to save yet
            raise KeyboardInterrupt
        self.received = "Ctrl-C (SIGINT)"
        signal.signal(signal.SIGINT, signal.default_int_handler)
        on_sigterm(signal.SIGTERM, frame)

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


# ----------------------------------------------------------------------------- what (mvq's part)


class TrainingState:
    """What mvq adds to Lightning's checkpoint (`mvq_state`), so a resumed run continues exactly.

    Mixed into both stages' LightningModules. The module sets `stage`, `self.batches_trained = 0`
    and (stage 2) `self.tokenizer_record`; its datamodule's train sampler is a ResumableSampler.
    """

    stage: ClassVar[int]
    batches_trained: int
    tokenizer_record: dict[str, Any] | None = None

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["mvq_state"] = {
            "stage": self.stage,
            "batches_trained": self.batches_trained,
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "tokenizer": self.tokenizer_record,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint["mvq_state"]  # read_checkpoint refused checkpoints without it
        check_stage(checkpoint, self.stage, "the checkpoint to resume")
        self._check_shapes(checkpoint["state_dict"])
        self.batches_trained = state["batches_trained"]
        self._pending_rng = state
        # The data position now: Lightning may start the first epoch's loader (and its workers' prefetching)
        # before any later hook runs.
        datamodule = self.trainer.datamodule if self._trainer is not None else None
        if datamodule is not None and hasattr(datamodule, "resume"):
            datamodule.resume(checkpoint["epoch"], self.batches_trained)

    def _check_shapes(self, saved: dict[str, torch.Tensor]) -> None:
        ours = self.state_dict()
        differ = sorted(set(saved) ^ set(ours))
        differ += [k for k in saved if k in ours and tuple(saved[k].shape) != tuple(ours[k].shape)]
        if differ:
            key = differ[0]
            detail = (f"{key}: checkpoint {tuple(saved[key].shape)}, config {tuple(ours[key].shape)}"
                      if key in saved and key in ours else f"{key} is only in the {'checkpoint' if key in saved else 'config'}")
            raise UserError(f"the checkpoint to resume does not match the config's model ({len(differ)} entries "
                            f"differ, e.g. {detail}); resume without changing the model's architecture")

    def restore_rng(self) -> None:
        """Called at train start: put the RNGs where the checkpoint left them."""
        state = getattr(self, "_pending_rng", None)
        if state is not None:
            torch.set_rng_state(state["torch_rng"])
            if state["cuda_rng"] is not None and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(state["cuda_rng"])
            self._pending_rng = None

    def on_train_epoch_start(self) -> None:
        datamodule = self.trainer.datamodule
        if datamodule is not None and hasattr(datamodule, "set_epoch"):
            datamodule.set_epoch(self.current_epoch)
