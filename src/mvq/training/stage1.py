"""Stage 1: the Lightning module that trains an MQ-VAE (or the VQGAN baseline) with its GAN (docs/method.md §5).

Two optimizers, manual optimisation: per batch the generator (encoder, masker, quantizer,
de-masker, decoder) takes a step on L1 + LPIPS + codebook + adaptive GAN loss, then the
PatchGAN discriminator on the hinge loss. Gradient accumulation really accumulates: the
optimizers step once every `optim.accumulate_grad_batches` batches.
"""

from __future__ import annotations

import lightning as L
import torch

from mvq.evaluation.tokenizer_stats import TokenizerStatistics
from mvq.losses.stage1 import Stage1Loss
from mvq.models.tokenizer import build_tokenizer, initialize_from, load_tokenizer
from mvq.training.checkpoints import TrainingState
from mvq.training.common import Throughput, optimizer_step, peak_lr, schedule_for
from mvq.training.stage1_config import Stage1Config


class TokenizerTraining(TrainingState, L.LightningModule):
    """Trains a stage-1 tokenizer (an MQ-VAE, or the VQGAN baseline) against its PatchGAN discriminator.

    `model` is the tokenizer `config.model` describes, `loss` holds L1 + LPIPS + GAN and the
    discriminator; validation logs the reconstruction loss, PSNR, codebook use and keep scores, and
    PSNR at the budgets `run.val_keep` names.
    """

    stage = 1

    def __init__(self, config: Stage1Config):
        super().__init__()

        self.config = config
        self.automatic_optimization = False
        self.model = build_tokenizer(config.model)
        self.loss = Stage1Loss(config.loss)
        if config.run.init_from:
            self._init_from(config.run.init_from)
        self.batches_trained = 0
        self._throughput = Throughput()
        self._reset_validation_stats()

    def _init_from(self, folder: str) -> None:
        """Start from a pretrained folder's weights (and its discriminator.safetensors, if present)."""
        from pathlib import Path

        from safetensors.torch import load_file

        initialize_from(self.model, load_tokenizer(folder), folder)
        disc = Path(folder) / "discriminator.safetensors"
        if disc.is_file() and self.loss.discriminator is not None:
            self.loss.discriminator.load_state_dict(load_file(str(disc)))

    # ----------------------------------------------------------------- optimisation
    def configure_optimizers(self):
        optim = self.config.optim
        lr = peak_lr(optim, self.config.data.batch_size, self.trainer.world_size)
        self.lr = lr
        betas = tuple(optim.betas)
        schedule = schedule_for(self.trainer, optim, lr)
        modules = [self.model] if self.loss.discriminator is None else [self.model, self.loss.discriminator]
        optimizers = [torch.optim.Adam(module.parameters(), lr=lr, betas=betas, weight_decay=optim.weight_decay)
                      for module in modules]
        return optimizers, [torch.optim.lr_scheduler.LambdaLR(opt, schedule) for opt in optimizers]

    def training_step(self, batch: dict, batch_idx: int) -> None:
        images = batch["image"]
        # Lightning hands back a single optimizer (not a list) when there is no discriminator.
        opt_g, *opt_d = _as_list(self.optimizers())
        sched_g, *sched_d = _as_list(self.lr_schedulers())
        accumulate = self.config.optim.accumulate_grad_batches
        stepping = (self.batches_trained + 1) % accumulate == 0

        self.toggle_optimizer(opt_g)
        out, g_loss, g_logs = self._generator_loss(images)
        self.manual_backward(g_loss / accumulate)
        self.untoggle_optimizer(opt_g)

        logs = {f"train/{k}": v for k, v in g_logs.items()}
        if self.loss.gan_active(self.global_step):
            self.toggle_optimizer(opt_d[0])
            d_loss, d_logs = self.loss.discriminator_loss(images, out.reconstruction.detach(), self.global_step)
            self.manual_backward(d_loss / accumulate)
            self.untoggle_optimizer(opt_d[0])
            logs.update({f"train/{k}": v for k, v in d_logs.items()})

        if stepping:
            clip = self.config.optim.grad_clip
            optimizer_step(self, opt_g, sched_g, clip)
            if opt_d:  # its step is not counted: global_step counts generator steps only
                optimizer_step(self, opt_d[0], sched_d[0], clip, count_step=False)
        self.batches_trained += 1

        logs["train/lr"] = torch.tensor(sched_g.get_last_lr()[0])
        self.log_dict(logs, on_step=True, logger=True)
        self.log("loss", g_loss.detach(), prog_bar=True, logger=False)
        self.log("l1", g_logs["l1_loss"], prog_bar=True, logger=False)
        rate = self._throughput.update(images.shape[0] * self.trainer.world_size)
        if rate is not None:
            self.log("img/s", rate, prog_bar=True, logger=True)

    def _generator_loss(self, images: torch.Tensor):
        """(output, loss, logs) of the generator on a batch. An any-K model keeps a drawn K cells (and, with
        `train_full_keep_pass`, adds the loss at its full K); a fixed-K model keeps its K."""
        model = self.config.model
        keep = model.draw_train_keep(images.shape[0]) if getattr(model, "any_k", False) else None
        if isinstance(keep, torch.Tensor):
            keep = keep.to(images.device)
        out = self.model(images) if keep is None else self.model(images, keep=keep)
        loss, logs = self.loss.generator_loss(images, out.reconstruction, out.codebook_loss, self.global_step,
                                              self.model.last_layer)
        if keep is not None:
            logs["train_keep"] = torch.as_tensor(keep, dtype=torch.float32).mean()
            if model.train_full_keep_pass:
                full = self.model(images)
                full_loss, _ = self.loss.generator_loss(images, full.reconstruction, full.codebook_loss,
                                                        self.global_step, self.model.last_layer)
                loss = loss + full_loss
                out = full
        return out, loss, logs

    # ----------------------------------------------------------------- validation
    def _reset_validation_stats(self) -> None:
        self._validation_stats = None
        self._budget_stats: dict[int, TokenizerStatistics] = {}

    def on_validation_epoch_start(self) -> None:
        self._reset_validation_stats()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        images = batch["image"]
        out = self.model(images)
        rec_loss = (out.reconstruction.float() - images).abs().mean()
        self.log_dict({"val/rec_loss": rec_loss, "val/codebook_loss": out.codebook_loss},
                      on_epoch=True, sync_dist=True, batch_size=images.shape[0])
        if self._validation_stats is None:
            self._validation_stats = TokenizerStatistics(self.config.model.codebook_size, images.device)
        self._validation_stats.update(out, images, out.reconstruction.float().clamp(-1, 1))
        for keep in self.config.run.val_keep:
            at_budget = self.model(images, keep=keep)
            stats = self._budget_stats.setdefault(keep, TokenizerStatistics(self.config.model.codebook_size,
                                                                             images.device))
            stats.update(at_budget, images, at_budget.reconstruction.float().clamp(-1, 1))

    def on_validation_epoch_end(self) -> None:
        if self._validation_stats is None:
            return
        self._validation_stats.all_reduce()
        summary = self._validation_stats.summary()
        logs = {"val/psnr": summary["psnr"], "val/codebook_usage": summary["codebook_usage_percent"],
                "val/perplexity": summary["codebook_perplexity"], "val/score_kept": summary["keep_score_kept"],
                "val/score_masked": summary["keep_score_masked"]}
        for keep, stats in self._budget_stats.items():
            stats.all_reduce()
            logs[f"val/psnr_keep{keep}"] = stats.summary()["psnr"]
        self.log_dict({k: v for k, v in logs.items() if v is not None}, rank_zero_only=True)

    # ----------------------------------------------------------------- checkpoints
    def on_train_start(self) -> None:
        self.restore_rng()

    def on_train_end(self) -> None:
        """Under data parallelism every rank must hold the same codebook; check it once at the end."""
        if self.trainer.world_size > 1:
            codebooks = self.all_gather(self.model.quantizer.codebook)
            if not all(torch.equal(codebooks[0], other) for other in codebooks[1:]):
                raise RuntimeError("the codebooks of the data-parallel ranks differ")


def _as_list(items) -> list:
    return list(items) if isinstance(items, (list, tuple)) else [items]
