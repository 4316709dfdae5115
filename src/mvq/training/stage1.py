"""Stage 1: the Lightning module that trains an MQ-VAE with its GAN (design §2.5).

Two optimizers, manual optimisation: per batch the generator (encoder, masker, quantizer,
de-masker, decoder) takes a step on L1 + LPIPS + codebook + adaptive GAN loss, then the
PatchGAN discriminator on the hinge loss. Gradient accumulation really accumulates: the
optimizers step once every `optim.accumulate_grad_batches` batches.
"""

from __future__ import annotations

import lightning as L
import torch

from mvq.config import dataclass_to_dict
from mvq.models.mqvae import MQVAE
from mvq.training.common import Throughput, TrainingStateMixin, peak_lr, schedule_for
from mvq.training.config import Stage1Config


class MQVAETraining(TrainingStateMixin, L.LightningModule):
    def __init__(self, config: Stage1Config):
        super().__init__()
        from mvq.losses.stage1 import Stage1Loss

        self.config = config
        self.automatic_optimization = False
        self.model = MQVAE(config.model)
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

        pretrained = MQVAE.from_pretrained(folder)
        if pretrained.config != self.model.config:
            raise ValueError(f"run.init_from={folder}: its model config differs from this config's model section")
        self.model.load_state_dict(pretrained.state_dict())
        disc = Path(folder) / "discriminator.safetensors"
        if disc.is_file():
            self.loss.discriminator.load_state_dict(load_file(str(disc)))

    # ----------------------------------------------------------------- optimisation
    def configure_optimizers(self):
        optim = self.config.optim
        lr = peak_lr(optim, self.config.data.batch_size, self.trainer.world_size)
        self.lr = lr
        betas = tuple(optim.betas)
        opt_g = torch.optim.Adam(self.model.parameters(), lr=lr, betas=betas, weight_decay=optim.weight_decay)
        opt_d = torch.optim.Adam(self.loss.discriminator.parameters(), lr=lr, betas=betas,
                                 weight_decay=optim.weight_decay)
        schedule = schedule_for(self.trainer, optim, lr)
        sched_g = torch.optim.lr_scheduler.LambdaLR(opt_g, schedule)
        sched_d = torch.optim.lr_scheduler.LambdaLR(opt_d, schedule)
        return [opt_g, opt_d], [sched_g, sched_d]

    def training_step(self, batch: dict, batch_idx: int) -> None:
        images = batch["image"]
        opt_g, opt_d = self.optimizers()
        sched_g, sched_d = self.lr_schedulers()
        accumulate = self.config.optim.accumulate_grad_batches
        stepping = (self.batches_trained + 1) % accumulate == 0

        out = self.model(images)
        self.toggle_optimizer(opt_g)
        g_loss, g_logs = self.loss.generator_loss(images, out.reconstruction, out.codebook_loss,
                                                  self.global_step, self.model.last_layer)
        self.manual_backward(g_loss / accumulate)
        self.untoggle_optimizer(opt_g)

        logs = {f"train/{k}": v for k, v in g_logs.items()}
        if self.loss.gan_active(self.global_step):
            self.toggle_optimizer(opt_d)
            d_loss, d_logs = self.loss.discriminator_loss(images, out.reconstruction.detach(), self.global_step)
            self.manual_backward(d_loss / accumulate)
            self.untoggle_optimizer(opt_d)
            logs.update({f"train/{k}": v for k, v in d_logs.items()})

        if stepping:
            clip = self.config.optim.grad_clip
            if clip:
                self.clip_gradients(opt_g, gradient_clip_val=clip, gradient_clip_algorithm="norm")
                self.clip_gradients(opt_d, gradient_clip_val=clip, gradient_clip_algorithm="norm")
            opt_g.step()
            opt_g.zero_grad(set_to_none=True)
            # The discriminator steps through the raw optimizer so that Lightning's global_step counts
            # generator steps only (one per optimisation step, as the schedule and `max_steps` expect).
            opt_d.optimizer.step()
            opt_d.optimizer.zero_grad(set_to_none=True)
            sched_g.step()
            sched_d.step()
        self.batches_trained += 1

        logs["train/lr"] = torch.tensor(sched_g.get_last_lr()[0])
        self.log_dict(logs, on_step=True, logger=True)
        self.log("loss", g_loss.detach(), prog_bar=True, logger=False)
        self.log("l1", g_logs["l1_loss"], prog_bar=True, logger=False)
        rate = self._throughput.update(images.shape[0] * self.trainer.world_size)
        if rate is not None:
            self.log("img/s", rate, prog_bar=True, logger=True)

    # ----------------------------------------------------------------- validation
    def _reset_validation_stats(self) -> None:
        self._code_counts = None
        self._kept_score_sum = self._masked_score_sum = None
        self._kept_cells = self._masked_cells = None

    def on_validation_epoch_start(self) -> None:
        self._reset_validation_stats()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        images = batch["image"]
        out = self.model(images)
        rec_loss = (out.reconstruction.float() - images).abs().mean()
        mse = ((out.reconstruction.float().clamp(-1, 1) - images) ** 2).flatten(1).mean(1)
        psnr = (10 * torch.log10(4.0 / mse.clamp_min(1e-10))).mean()  # images span [-1, 1]
        self.log_dict({"val/rec_loss": rec_loss, "val/psnr": psnr, "val/codebook_loss": out.codebook_loss},
                      on_epoch=True, sync_dist=True, batch_size=images.shape[0])
        counts = torch.bincount(out.codes.flatten(), minlength=self.config.model.codebook_size).float()
        keep = out.keep_mask.flatten(1)
        scores = out.scores.flatten(1).float()
        stats = [counts, (scores * keep).sum(), (scores * ~keep).sum(), keep.sum().float(), (~keep).sum().float()]
        if self._code_counts is None:
            (self._code_counts, self._kept_score_sum, self._masked_score_sum,
             self._kept_cells, self._masked_cells) = stats
        else:
            self._code_counts += stats[0]
            self._kept_score_sum += stats[1]
            self._masked_score_sum += stats[2]
            self._kept_cells += stats[3]
            self._masked_cells += stats[4]

    def on_validation_epoch_end(self) -> None:
        if self._code_counts is None:
            return
        counts = self.all_gather(self._code_counts)
        counts = counts.sum(0) if counts.dim() > 1 else counts
        sums = torch.stack([self._kept_score_sum, self._masked_score_sum, self._kept_cells, self._masked_cells])
        sums = self.all_gather(sums)
        sums = sums.sum(0) if sums.dim() > 1 else sums
        from mvq.evaluation.codebook import codebook_usage_from_counts

        usage = codebook_usage_from_counts(counts)
        self.log_dict({"val/codebook_usage": usage["usage_percent"], "val/perplexity": usage["perplexity"],
                       "val/score_kept": sums[0] / sums[2].clamp_min(1),
                       "val/score_masked": sums[1] / sums[3].clamp_min(1)}, rank_zero_only=True)

    # ----------------------------------------------------------------- checkpoints
    def on_train_start(self) -> None:
        self.restore_rng_and_data_position()

    def on_train_end(self) -> None:
        """Under data parallelism every rank must hold the same codebook; check it once at the end."""
        if self.trainer.world_size > 1:
            codebooks = self.all_gather(self.model.quantizer.codebook)
            if not all(torch.equal(codebooks[0], other) for other in codebooks[1:]):
                raise RuntimeError("the codebooks of the data-parallel ranks differ")

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["mvq_config"] = {"stage": 1, "model": dataclass_to_dict(self.config.model)}
        self.save_training_state(checkpoint)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.load_training_state(checkpoint)
