"""The authors' MQ-VAE and Stackformer modules, assembled for side-by-side timing.

They are found in `../shared/reference/original` beside the repository (or the folder named by
the environment variable MVQ_REFERENCE_DIR); a user's clone does not have them, and then the
comparisons are skipped with a message. Only their modules are used: the stage-1 forward pass and
the sampling loop below are written here, following the authors' Lightning module (encoder →
masker → quantizer → de-masker → decoder; sampling re-runs the model over the whole prefix at
every step and forbids used positions sample by sample).
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from pathlib import Path

import torch
from torch import nn

from harness import REPOSITORY

REFERENCE_DIR = Path(os.environ.get("MVQ_REFERENCE_DIR",
                                    Path(REPOSITORY).parent / "shared" / "reference" / "original"))


def unavailable_reason() -> str | None:
    """Why the reference modules cannot be used here, or None when they can."""
    if not (REFERENCE_DIR / "modules").is_dir():
        return (f"reference modules not found at {REFERENCE_DIR} (set MVQ_REFERENCE_DIR to a copy of the "
                f"authors' `modules/` folder's parent); reference comparisons skipped")
    try:
        import einops  # noqa: F401  (the reference modules need it)
    except ImportError:
        return "the reference modules need einops (`pip install einops`); reference comparisons skipped"
    return None


def _import_reference():
    if str(REFERENCE_DIR) not in sys.path:
        sys.path.insert(0, str(REFERENCE_DIR))


class ReferenceMQVAE(nn.Module):
    """The authors' stage-1 modules with the same architecture as an `MQVAEConfig`."""

    def __init__(self, config):
        super().__init__()
        _import_reference()
        from modules.diffusionmodules.model import Encoder
        from modules.masked_quantization.decoder import Decoder
        from modules.masked_quantization.demasker_vanilla import VanillaDemasker
        from modules.masked_quantization.masker_vanilla_refine import VanillaMasker
        from modules.vector_quantization.quantize2 import VectorQuantize2

        c = config
        with contextlib.redirect_stdout(io.StringIO()):  # their decoder prints its latent shape
            self.encoder = Encoder(ch=c.ch, out_ch=c.in_channels, ch_mult=tuple(c.ch_mult),
                                   num_res_blocks=c.num_res_blocks, attn_resolutions=list(c.attn_resolutions),
                                   dropout=c.dropout, in_channels=c.in_channels, resolution=c.resolution,
                                   z_channels=c.z_channels, double_z=False)
            self.masker = VanillaMasker(topk_ratio=c.keep_ratio, input_token_num=c.num_cells,
                                        input_dim=c.z_channels, patch_size=c.downsample_factor,
                                        score_pred_net_mode="2layer", codebook_dim=c.codebook_dim)
            self.quantize = VectorQuantize2(codebook_size=c.codebook_size, codebook_dim=c.codebook_dim,
                                            accept_image_fmap=False, channel_last=False,
                                            commitment_beta=c.commitment_beta, decay=c.ema_decay,
                                            restart_unused_codes=c.restart_unused_codes)
            self.demasker = VanillaDemasker(codebook_dim=c.codebook_dim, output_dim=c.z_channels,
                                            height_and_width=c.grid_size, n_layer=c.demask_layers,
                                            mask_init_value=c.mask_init_value)
            self.decoder = Decoder(ch=c.ch, in_ch=c.z_channels, out_ch=c.in_channels, ch_mult=tuple(c.ch_mult),
                                   num_res_blocks=c.num_res_blocks, resolution=c.resolution,
                                   attn_resolutions=list(c.attn_resolutions), dropout=c.dropout)

    def encode(self, images: torch.Tensor):
        masked = self.masker(self.encoder(images))
        quantized, codebook_loss, (_, _, codes) = self.quantize(masked["sample_features"])
        return quantized, codebook_loss, codes, masked

    def decode(self, quantized: torch.Tensor, positions: torch.Tensor, keep_mask: torch.Tensor) -> torch.Tensor:
        with _parameters_as_plain_tensors():
            features = self.demasker(quantized, None, positions, None, keep_mask)
        return self.decoder(features)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images → (reconstruction, codebook loss), as the authors' model's forward."""
        quantized, codebook_loss, _, masked = self.encode(images)
        with _parameters_as_plain_tensors():
            features = self.demasker(quantized, None, masked["sample_index"], masked["remain_index"],
                                     masked["squeezed_mask"])
        return self.decoder(features), codebook_loss

    @torch.no_grad()
    def detokenize(self, codes: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """As the authors' `decode_to_img`: codebook lookup, keep-mask from the positions, decode."""
        quantized = self.quantize.get_codebook_entry(codes).transpose(1, 2)
        keep_mask = torch.zeros(codes.shape[0], self.demasker.total_code_num, device=codes.device)
        keep_mask.scatter_(1, positions, 1.0)
        return self.decode(quantized, positions, keep_mask)


@contextlib.contextmanager
def _parameters_as_plain_tensors():
    """The de-masker builds its grid as `nn.Parameter(zeros).to(device)`: on CUDA `.to` returns a copy,
    on CPU the leaf parameter itself, which then rejects the in-place writes that follow. During its
    forward, `nn.Parameter` returns the plain tensor, which is what the CUDA path computes with."""
    original = nn.Parameter
    nn.Parameter = lambda data=None, requires_grad=True: data
    try:
        yield
    finally:
        nn.Parameter = original


def used_parameter_shapes(model: nn.Module, unused: tuple[str, ...] = ()) -> list[tuple[int, ...]]:
    """Sorted shapes (without size-1 dimensions) of the parameters a forward pass uses; names containing
    one of `unused` are left out."""
    return sorted(tuple(d for d in p.shape if d != 1) for name, p in model.named_parameters()
                  if not any(u in name for u in unused))


def reference_stackformer(config) -> nn.Module:
    """The authors' `ReverseStackedPositionGPT` with the shapes of a `StackformerConfig`."""
    _import_reference()
    from modules.masked_quantization_stage2.stackedgpt import ReverseStackedPositionGPT

    c = config
    return ReverseStackedPositionGPT(vocab_size=c.codebook_size + max(c.num_classes, 1),
                                     position_size=c.num_cells + 1, block_size=c.num_tokens,
                                     position_layer=c.position_layers, value_layer=c.code_layers,
                                     n_head=c.heads, n_embd=c.dim).eval()


def _top_k_top_p(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
    probs = logits.masked_fill(logits < kth, float("-inf")).softmax(dim=-1)
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    outside = sorted_probs.cumsum(dim=-1) - sorted_probs >= top_p
    return probs.masked_fill(outside.scatter(-1, order, outside), 0.0)


@torch.no_grad()
def reference_step(model: nn.Module, tokens: torch.Tensor, positions: torch.Tensor, num_classes: int,
                   top_k: int = 100, top_p: float = 0.95, position_top_k: int = 10, position_top_p: float = 0.95,
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of the authors' way of sampling: both stacks over the whole prefix (no cache), then a code
    and its position. Token ids as theirs (classes first, then codes); returns the extended prefix."""
    code_logits = model.sample_value(tokens, positions)[:, -1].clone()
    for i in range(tokens.shape[0]):  # never sample a class token
        code_logits[i, :num_classes] = float("-inf")
    code = torch.multinomial(_top_k_top_p(code_logits, top_k, top_p), 1)
    tokens = torch.cat([tokens, code], dim=1)
    position_logits = model.sample_position(tokens, positions)[:, -1].clone()
    for i in range(tokens.shape[0]):  # never repeat a position (nor the start position)
        position_logits[i, positions[i]] = float("-inf")
    position = torch.multinomial(_top_k_top_p(position_logits, position_top_k, position_top_p), 1)
    return tokens, torch.cat([positions, position], dim=1)


def reference_generate(model: nn.Module, labels: torch.Tensor, steps: int, num_classes: int,
                       num_cells: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`steps` reference sampling steps from the class token → (codes, positions), each B×steps."""
    tokens = labels.reshape(-1, 1)
    positions = torch.full_like(tokens, num_cells)
    for _ in range(steps):
        tokens, positions = reference_step(model, tokens, positions, num_classes)
    return tokens[:, 1:] - num_classes, positions[:, 1:]


def prefix_step_seconds(model: nn.Module, batch: int, lengths: list[int], num_classes: int, num_cells: int,
                        repeats: int = 1) -> dict[int, float]:
    """Seconds of one reference sampling step whose prefix holds `length` tokens (median of repeats)."""
    from harness import measure, summary

    costs = {}
    for length in lengths:
        tokens = torch.randint(num_classes, num_classes + 64, (batch, length))
        positions = torch.randperm(num_cells)[:length].expand(batch, length)
        step = lambda: reference_step(model, tokens, positions, num_classes)  # noqa: E731
        step()
        costs[length] = summary([measure(step) for _ in range(repeats)])["median"]
    return costs


def interpolated_total(costs: dict[int, float], steps: int) -> float:
    """Σ over t = 1..steps of the cost at prefix length t, interpolated linearly between measured lengths."""
    points = sorted(costs.items())
    total = 0.0
    for t in range(1, steps + 1):
        for (l0, c0), (l1, c1) in zip(points, points[1:]):
            if l0 <= t <= l1:
                total += c0 + (c1 - c0) * (t - l0) / max(l1 - l0, 1)
                break
    return total
