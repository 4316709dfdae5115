"""Stage 2: the Lightning module that trains a Stackformer on a token store (docs/method.md §6).

Batches are (codes, positions, label) rows read from a store that `mvq tokenize` wrote once;
the MQ-VAE is only loaded to check that it made the store and to decode sample grids.
Optimisation: AdamW with weight decay on linear weights only, warm-up + cosine, manual
stepping so that `optim.accumulate_grad_batches` really accumulates (and skips the DDP
all-reduce on the batches that do not step).
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import Subset

from mvq.config import ConfigError, dataclass_to_dict
from mvq.data.token_store import TokenStore, check_compatible, read_header
from mvq.models.pretrained import weights_fingerprint
from mvq.models.stackformer import Stackformer
from mvq.models.tokenizer import load_tokenizer
from mvq.training.checkpoints import TrainingState
from mvq.training.common import Throughput, optimizer_step, peak_lr, schedule_for
from mvq.training.datamodule import ResumableDataModule
from mvq.training.stage2_config import Stage2Config, read_vae_config
from mvq.visualize import image_grid, save_image

VAL_SPLIT_SEED = 20230601  # the held-out rows depend on the store only, not on the run's seed


# ----------------------------------------------------------------------------- data


def held_out_rows(count: int, fraction: float, group: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """(train rows, val rows) of a store of `count` rows: a fixed random `fraction` of it held out.

    Rows come in groups of `group` consecutive rows (2 for stores with flipped copies: an image
    and its mirror) that stay on the same side of the split.
    """
    groups = count // group
    if groups < 2:
        raise ConfigError(f"the token store has {count} rows: too few to hold out a validation set "
                          f"(set data.val_tokens)")
    num_val = min(groups - 1, max(1, round(fraction * groups)))
    order = torch.randperm(groups, generator=torch.Generator().manual_seed(VAL_SPLIT_SEED))
    val_groups, _ = order[:num_val].sort()
    train_groups, _ = order[num_val:].sort()

    def rows(g: torch.Tensor) -> torch.Tensor:
        return (g[:, None] * group + torch.arange(group)).flatten()

    return rows(train_groups), rows(val_groups)


class TokenDataModule(ResumableDataModule):
    """Token-store batches: `codes` and `positions` (B×K long), `label` (B long)."""

    store = None  # the training store (its header says what the tokens mean)

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is not None:
            return
        self.store = TokenStore(self.config.tokens)
        if self.config.val_tokens is not None:
            self.train_dataset, self.val_dataset = self.store, TokenStore(self.config.val_tokens)
        else:
            group = 2 if self.store.header.flip else 1
            train_rows, val_rows = held_out_rows(len(self.store), self.config.val_fraction, group)
            self.train_dataset = Subset(self.store, train_rows.tolist())
            self.val_dataset = Subset(self.store, val_rows.tolist())


# ----------------------------------------------------------------------------- training


class StackformerTraining(TrainingState, L.LightningModule):
    """Trains a Stackformer on token-store rows (teacher-forced code + position losses).

    Records which tokenizer made the tokens (`tokenizer_record`), so checkpoints and exported
    folders name it; the `SampleGrids` callback checks that tokenizer against the store.
    """

    stage = 2

    def __init__(self, config: Stage2Config):
        super().__init__()
        self.config = config
        self.automatic_optimization = False
        self.model = Stackformer(config.model)
        self.batches_trained = 0
        self.tokenizer_record = tokenizer_record(config)
        self._throughput = Throughput()

    def callbacks(self, folder: Path) -> list[Callback]:
        """Extra callbacks of a stage-2 run: the store/MQ-VAE check and sample grids."""
        run = self.config.run
        return [SampleGrids(self.config.vae, run.image_every_n_steps, run.num_log_images,
                            Path(folder) / "images", seed=run.seed)]

    def _labels(self, batch: dict) -> torch.Tensor | None:
        return batch["label"] if self.config.model.num_classes else None

    # ----------------------------------------------------------------- optimisation
    def configure_optimizers(self):
        optim = self.config.optim
        lr = peak_lr(optim, self.config.data.batch_size, self.trainer.world_size)
        groups = self.model.optimizer_groups(optim.weight_decay)
        optimizer = torch.optim.AdamW(groups, lr=lr, betas=tuple(optim.betas))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule_for(self.trainer, optim, lr))
        return [optimizer], [scheduler]

    def _seed_step(self) -> None:
        """Seed dropout and label dropout from (run seed, rank, batch): a resumed run draws the same masks."""
        seed = (self.config.run.seed * 1_000_003 + self.global_rank) * 1_000_003 + self.batches_trained
        torch.manual_seed(seed % (2 ** 63))

    def training_step(self, batch: dict, batch_idx: int) -> None:
        optimizer = self.optimizers()
        scheduler = self.lr_schedulers()
        accumulate = self.config.optim.accumulate_grad_batches
        stepping = (self.batches_trained + 1) % accumulate == 0
        codes, positions = batch["codes"], batch["positions"]

        self._seed_step()
        no_sync = getattr(self.trainer.strategy, "block_backward_sync", None)
        with no_sync() if (no_sync is not None and not stepping) else contextlib.nullcontext():
            out = self.model(codes, positions, self._labels(batch))
            self.manual_backward(out.loss / accumulate)
        if stepping:
            optimizer_step(self, optimizer, scheduler, self.config.optim.grad_clip)
        self.batches_trained += 1

        self.log_dict({"train/loss": out.loss.detach(), "train/code_loss": out.code_loss.detach(),
                       "train/position_loss": out.position_loss.detach(),
                       "train/lr": torch.tensor(scheduler.get_last_lr()[0])}, on_step=True, logger=True)
        self.log("loss", out.loss.detach(), prog_bar=True, logger=False)
        rate = self._throughput.update(codes.numel() * self.trainer.world_size)
        if rate is not None:
            self.log("train/tokens_per_s", rate, prog_bar=False, logger=True)
            self.log("tok/s", rate, prog_bar=True, logger=False)

    # ----------------------------------------------------------------- validation
    def validation_step(self, batch: dict, batch_idx: int) -> None:
        out = self.model(batch["codes"], batch["positions"], self._labels(batch))
        self.log_dict({"val/loss": out.loss, "val/code_loss": out.code_loss,
                       "val/position_loss": out.position_loss},
                      on_epoch=True, sync_dist=True, batch_size=batch["codes"].shape[0])

    # ----------------------------------------------------------------- checkpoints
    def on_train_start(self) -> None:
        self.restore_rng()


def tokenizer_record(config: Stage2Config) -> dict:
    """The tokenizer (MQ-VAE or VQGAN) whose tokens the Stackformer learns: its weights fingerprint (as
    the token store recorded it) and its config. Checkpoints carry it and `mvq export` writes it as
    tokenizer.json, so samples are never decoded with another tokenizer of the same shapes.
    """
    fingerprint = read_header(config.data.tokens).vae.get("weights_sha256")
    if fingerprint is None:  # a store that did not record it: the MQ-VAE it is checked against
        fingerprint = weights_fingerprint(load_tokenizer(config.vae))
    return {"tokenizer_fingerprint": fingerprint, "tokenizer_config": dataclass_to_dict(read_vae_config(config.vae))}


# ----------------------------------------------------------------------------- sample grids


def grid_labels(num_classes: int, rows: int) -> list[int]:
    """`rows` classes spread evenly over 0..num_classes-1 (all of them when there are few)."""
    rows = min(rows, num_classes)
    return [math.floor(i * num_classes / rows) for i in range(rows)]


class SampleGrids(Callback):
    """Checks the MQ-VAE against the token store, then every N steps writes a grid of samples.

    The grid's first row decodes fixed validation rows (what the model learns to produce);
    then one row per class (spread over the classes, at most `num_images` rows) of a
    class-conditional model, or two rows of an unconditional one. Samples use a fixed seed,
    so grids of successive steps show the same draws as the model improves.
    """

    def __init__(self, vae_path: str, every_n_steps: int, num_images: int, out_dir: Path, seed: int = 0):
        self.vae_path, self.every_n_steps, self.num_images = vae_path, every_n_steps, num_images
        self.out_dir, self.seed = Path(out_dir), seed
        self.vae = None
        self._last_step: int | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: StackformerTraining) -> None:
        if not trainer.is_global_zero:
            return
        vae = load_tokenizer(self.vae_path)
        datamodule = trainer.datamodule
        stores = [datamodule.store]
        if hasattr(datamodule.val_dataset, "header"):  # a store of its own (data.val_tokens)
            stores.append(datamodule.val_dataset)
        fingerprint = weights_fingerprint(vae)
        for store in stores:
            try:
                check_compatible(store.header, vae.config, weights_sha256=fingerprint, any_budget=True)
            except ValueError as exc:
                raise ConfigError(f"{store.path}: {exc} (vae: {self.vae_path})") from None
        self.vae = vae.to(pl_module.device)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if not trainer.is_global_zero or self.every_n_steps <= 0 or step == 0 or step % self.every_n_steps:
            return
        if self._last_step == step:  # several batches per step under accumulation
            return
        self._last_step = step
        self.write(trainer, pl_module, step)

    @torch.no_grad()
    def rows(self, trainer: L.Trainer, model: Stackformer) -> list[torch.Tensor]:
        """Image rows of the grid (each num_images×3×R×R in [-1, 1])."""
        device = model.code_embedding.weight.device
        n = self.num_images
        val = trainer.datamodule.val_dataset
        items = [val[i] for i in range(min(n, len(val)))]
        rows = [self.vae.detokenize(torch.stack([it["codes"] for it in items]).to(device),
                                    torch.stack([it["positions"] for it in items]).to(device))]
        if len(items) < n:  # pad the reference row to the grid's width
            rows[0] = torch.cat([rows[0], rows[0].new_ones(n - len(items), *rows[0].shape[1:])])
        num_classes = model.config.num_classes
        row_labels = grid_labels(num_classes, n) if num_classes else [None, None]
        generator = torch.Generator(device=device).manual_seed(self.seed)
        labels = None if not num_classes else torch.tensor(row_labels, device=device).repeat_interleave(n)
        codes, positions = model.generate(n * len(row_labels), labels=labels, generator=generator)
        samples = self.vae.detokenize(codes, positions).float()
        rows.extend(samples.split(n))
        return rows

    def write(self, trainer: L.Trainer, pl_module: StackformerTraining, step: int) -> Path:
        grid = image_grid(self.rows(trainer, pl_module.model))
        path = save_image(grid, self.out_dir / f"step_{step:07d}.png")
        logger = trainer.logger
        if logger is not None and hasattr(logger, "experiment") and hasattr(logger.experiment, "add_image"):
            logger.experiment.add_image("samples", grid, step)
        return path
