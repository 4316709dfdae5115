"""Stage-1 loss: discriminator layout and reference mapping, adaptive GAN weight, hinge losses."""

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from mvq.config import ConfigError, build_dataclass
from mvq.convert.losses import discriminator_from_original, load_original_discriminator
from mvq.losses.discriminator import PatchDiscriminator
from mvq.losses.stage1 import Stage1Loss, Stage1LossConfig

SMALL_DISC = dict(perceptual_weight=0.0, disc_layers=2, disc_channels=8)


def reference_key_shapes(n_layers=3, ndf=64, in_channels=3):
    """The state-dict layout of the taming/VQGAN NLayerDiscriminator (BatchNorm variant).

    Its `main` Sequential is: conv(4, stride 2, bias), LeakyReLU, then per further layer
    conv(no bias), BatchNorm, LeakyReLU, then the output conv(bias).
    """
    shapes = {"main.0.weight": (ndf, in_channels, 4, 4), "main.0.bias": (ndf,)}
    index, mult = 2, 1
    for n in range(1, n_layers + 1):
        prev, mult = mult, min(2 ** n, 8)
        shapes[f"main.{index}.weight"] = (ndf * mult, ndf * prev, 4, 4)
        for name in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"main.{index + 1}.{name}"] = (ndf * mult,)
        shapes[f"main.{index + 1}.num_batches_tracked"] = ()
        index += 3
    shapes[f"main.{index}.weight"] = (1, ndf * mult, 4, 4)
    shapes[f"main.{index}.bias"] = (1,)
    return shapes


class ReferenceDiscriminator(nn.Module):
    """The reference's discriminator, written out from its documented layout (a `main` Sequential)."""

    def __init__(self, n_layers=3, ndf=64):
        super().__init__()
        self.main = reference_sequential(n_layers, ndf)

    def forward(self, x):
        return self.main(x)


def reference_sequential(n_layers=3, ndf=64):
    layers = [nn.Conv2d(3, ndf, 4, 2, 1), nn.LeakyReLU(0.2)]
    mult = 1
    for n in range(1, n_layers + 1):
        prev, mult = mult, min(2 ** n, 8)
        layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, 2 if n < n_layers else 1, 1, bias=False),
                   nn.BatchNorm2d(ndf * mult), nn.LeakyReLU(0.2)]
    layers.append(nn.Conv2d(ndf * mult, 1, 4, 1, 1))
    return nn.Sequential(*layers)


def random_state(shapes):
    state = {}
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(7)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape) + 0.5
        else:
            state[key] = torch.randn(shape)
    return state


# ------------------------------------------------------------------------ discriminator


def test_discriminator_output_grid_and_init():
    disc = PatchDiscriminator()
    logits = disc(torch.randn(2, 3, 64, 64))
    assert logits.shape == (2, 1, 6, 6)  # 64 -> 32 -> 16 -> 8 -> 7 -> 6
    convs = [m for m in disc.modules() if isinstance(m, nn.Conv2d)]
    norms = [m for m in disc.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(convs) == 5 and len(norms) == 3
    big = disc.blocks[2].conv.weight  # 512×256×4×4: enough samples for tight statistics
    assert abs(big.mean().item()) < 1e-3 and abs(big.std().item() - 0.02) < 1e-3
    norm_weights = torch.cat([n.weight for n in norms])
    assert abs(norm_weights.mean().item() - 1.0) < 0.01 and 0.01 < norm_weights.std().item() < 0.03
    assert all(torch.all(n.bias == 0) for n in norms)
    assert all(b.conv.bias is None for b in disc.blocks)


def test_reference_discriminator_keys_map_to_ours_and_compute_the_same():
    shapes = reference_key_shapes()
    reference_state = random_state(shapes)
    checkpoint = {f"loss.discriminator.{k}": v for k, v in reference_state.items()}
    checkpoint["encoder.conv_in.weight"] = torch.randn(4, 3, 3, 3)  # other model parts are ignored
    checkpoint["loss.perceptual_loss.net.slice1.0.weight"] = torch.randn(2)

    ours = discriminator_from_original(checkpoint)
    disc = PatchDiscriminator()
    assert set(ours) == set(disc.state_dict())
    disc.load_state_dict(ours, strict=True)
    assert torch.equal(disc.blocks[1].norm.running_var, reference_state["main.6.running_var"])
    assert torch.equal(disc.head.weight, reference_state["main.11.weight"])

    reference = ReferenceDiscriminator()
    reference.load_state_dict(reference_state, strict=True)
    images = torch.randn(2, 3, 32, 32)
    rebuilt = load_original_discriminator(reference_state)  # shapes inferred from the weights
    torch.testing.assert_close(rebuilt.eval()(images), reference.eval()(images))
    for mode in (False, True):  # eval: running statistics; train: batch statistics
        disc.train(mode)
        reference.train(mode)
        torch.testing.assert_close(disc(images), reference(images))


def test_reference_mapping_infers_other_depths_and_rejects_unknown_layouts():
    state = random_state(reference_key_shapes(n_layers=2, ndf=16))
    disc = load_original_discriminator(state)
    assert len(disc.blocks) == 2 and disc.stem.out_channels == 16
    with pytest.raises(ValueError, match="ActNorm"):
        discriminator_from_original({**state, "main.3.loc": torch.zeros(1, 32, 1, 1)})
    with pytest.raises(ValueError, match="main.4"):
        discriminator_from_original({**state, "main.4.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="no reference discriminator"):
        discriminator_from_original({})
    with pytest.raises(ValueError, match="do not form a PatchGAN"):
        load_original_discriminator({**state, "main.2.weight": torch.zeros(32, 3, 4, 4)})


# ------------------------------------------------------------------------ generator loss


class ToyDecoder(nn.Module):
    """A 1×1 conv 'last layer' over fixed features: reconstructions = conv(features, w)."""

    def __init__(self, features):
        super().__init__()
        self.features = features
        self.conv_out = nn.Conv2d(features.shape[1], 3, 1, bias=False)

    def forward(self):
        return self.conv_out(self.features)


def hand_adaptive_weight(loss, inputs, decoder, disc_weight, disc_weight_max):
    """λ from gradients taken by hand: ∂/∂w of a 1×1 conv is Σ_{b,y,x} ∂L/∂out[b,o] · in[b,i]."""
    features = decoder.features
    reconstructions = decoder().detach().requires_grad_(True)
    nll = (inputs - reconstructions).abs().mean()
    # d nll / d reconstruction: sign / numel (no autograd involved)
    nll_out_grad = torch.sign(reconstructions.detach() - inputs) / inputs.numel()
    g = -loss.discriminator(reconstructions).mean()
    g_out_grad, = torch.autograd.grad(g, reconstructions)
    nll_w = torch.einsum("bohw,bihw->oi", nll_out_grad, features)
    g_w = torch.einsum("bohw,bihw->oi", g_out_grad, features)
    ratio = min(max(nll_w.norm().item() / (g_w.norm().item() + 1e-4), 0.0), 1e4)
    weight = ratio * disc_weight
    if disc_weight_max is not None:
        weight = min(weight, disc_weight_max)
    return weight, nll.item(), g.item()


@pytest.mark.parametrize("cap", [None, "binding"])
def test_adaptive_gan_weight_matches_hand_computation(cap):
    features = torch.randn(2, 5, 16, 16)
    inputs = torch.rand(2, 3, 16, 16) * 2 - 1
    decoder = ToyDecoder(features)
    loss_fn = Stage1Loss(Stage1LossConfig(**SMALL_DISC, disc_weight=0.75, disc_weight_max=None,
                                          codebook_weight=0.5)).eval()  # eval: BN uses running stats
    expected, nll, g = hand_adaptive_weight(loss_fn, inputs, decoder, 0.75, None)
    if cap == "binding":
        loss_fn.config.disc_weight_max = 0.5 * expected
        expected = 0.5 * expected
    codebook_loss = torch.tensor([0.2, 0.4])
    loss, logs = loss_fn.generator_loss(inputs, decoder(), codebook_loss, global_step=0,
                                        last_layer=decoder.conv_out.weight)
    assert logs["gan_weight"].item() == pytest.approx(expected, rel=1e-4)
    assert logs["g_loss"].item() == pytest.approx(g, rel=1e-5)
    assert loss.item() == pytest.approx(nll + expected * g + 0.5 * 0.3, rel=1e-5)
    assert all(not v.requires_grad for v in logs.values())


def test_adaptive_weight_clamps_to_upper_bound_when_gan_gradient_vanishes():
    loss_fn = Stage1Loss(Stage1LossConfig(**SMALL_DISC, disc_weight=1.0, disc_weight_max=None))
    w = nn.Parameter(torch.randn(3))
    nll = (w ** 2).sum()
    g = 0.0 * w.sum()  # zero gradient: ratio = ‖∇nll‖ / 1e-4, clamped to 1e4
    assert loss_fn.adaptive_gan_weight(nll, g, w).item() == pytest.approx(1e4)


def test_gan_term_is_zero_before_disc_start():
    decoder = ToyDecoder(torch.randn(2, 5, 16, 16))
    inputs = torch.rand(2, 3, 16, 16) * 2 - 1
    loss_fn = Stage1Loss(Stage1LossConfig(**SMALL_DISC, disc_start=5, disc_weight_max=None))
    codebook_loss = torch.tensor(0.3)

    loss, logs = loss_fn.generator_loss(inputs, decoder(), codebook_loss, 4, decoder.conv_out.weight)
    l1 = (inputs - decoder()).abs().mean()
    assert logs["gan_weight"].item() == 0.0 and logs["g_loss"].item() == 0.0
    assert loss.item() == pytest.approx((l1 + 0.3).item(), rel=1e-6)
    loss.backward()
    assert all(p.grad is None for p in loss_fn.discriminator.parameters())  # not even run
    d_loss, _ = loss_fn.discriminator_loss(inputs, decoder(), 4)
    assert d_loss.item() == 0.0

    loss, logs = loss_fn.generator_loss(inputs, decoder(), codebook_loss, 5, decoder.conv_out.weight)
    assert logs["gan_weight"].item() > 0 and logs["g_loss"].item() != 0.0
    assert loss.item() != pytest.approx((l1 + 0.3).item(), rel=1e-6)
    d_loss, _ = loss_fn.discriminator_loss(inputs, decoder(), 5)
    assert d_loss.item() > 0


def test_null_disc_start_builds_no_discriminator():
    decoder = ToyDecoder(torch.randn(2, 5, 16, 16))
    inputs = torch.rand(2, 3, 16, 16) * 2 - 1
    loss_fn = Stage1Loss(Stage1LossConfig(**SMALL_DISC, disc_start=None))
    assert loss_fn.discriminator is None and not loss_fn.gan_active(10**9)
    assert not any(key.startswith("discriminator.") for key in loss_fn.state_dict())
    loss, logs = loss_fn.generator_loss(inputs, decoder(), torch.tensor(0.3), 10**9, decoder.conv_out.weight)
    assert loss.item() == pytest.approx(((inputs - decoder()).abs().mean() + 0.3).item(), rel=1e-6)
    with pytest.raises(ValueError, match="no discriminator"):
        loss_fn.discriminator_loss(inputs, decoder(), 0)


def test_gradients_reach_the_generator_and_not_through_the_discriminator_loss():
    loss_fn = Stage1Loss(Stage1LossConfig(**SMALL_DISC))
    decoder = ToyDecoder(torch.randn(2, 5, 16, 16))
    inputs = torch.rand(2, 3, 16, 16) * 2 - 1
    reconstructions = decoder()
    reconstructions.retain_grad()
    loss, logs = loss_fn.generator_loss(inputs, reconstructions, torch.tensor(0.1), 0, decoder.conv_out.weight)
    assert logs["gan_weight"].item() > 0
    loss.backward()
    assert decoder.conv_out.weight.grad is not None and decoder.conv_out.weight.grad.abs().sum() > 0
    assert torch.isfinite(reconstructions.grad).all() and reconstructions.grad.abs().sum() > 0

    decoder.zero_grad()
    loss_fn.zero_grad()
    d_loss, logs = loss_fn.discriminator_loss(inputs, decoder(), 0)
    d_loss.backward()
    assert decoder.conv_out.weight.grad is None  # reconstructions are detached for D's update
    assert all(p.grad is not None for p in loss_fn.discriminator.parameters())


class FirstChannel(nn.Module):
    """A stand-in discriminator whose logits are the images' first channel."""

    def forward(self, images):
        return images[:, :1]


def test_hinge_discriminator_loss_values():
    loss_fn = Stage1Loss(Stage1LossConfig(**SMALL_DISC, disc_factor=2.0))
    loss_fn.discriminator = FirstChannel()
    real = torch.zeros(1, 3, 2, 2)
    fake = torch.zeros(1, 3, 2, 2)
    real[0, 0] = torch.tensor([[2.0, 0.5], [-1.0, 1.0]])  # relu(1 - l): 0, 0.5, 2, 0 -> mean 0.625
    fake[0, 0] = torch.tensor([[-2.0, 0.0], [0.5, -0.5]])  # relu(1 + l): 0, 1, 1.5, 0.5 -> mean 0.75
    d_loss, logs = loss_fn.discriminator_loss(real, fake, global_step=0)
    assert d_loss.item() == pytest.approx(2.0 * 0.5 * (0.625 + 0.75))
    assert logs["logits_real"].item() == pytest.approx(0.625)
    assert logs["logits_fake"].item() == pytest.approx(-0.5)
    # generator side: g = -mean D(fake)
    with torch.no_grad():
        _, logs = loss_fn.generator_loss(real, fake, torch.tensor(0.0), 0)
    assert logs["g_loss"].item() == pytest.approx(0.5)
    assert logs["gan_weight"].item() == 0.0  # no gradients under no_grad (validation)


def test_training_without_last_layer_is_a_clear_error():
    loss_fn = Stage1Loss(Stage1LossConfig(**SMALL_DISC))
    decoder = ToyDecoder(torch.randn(1, 5, 16, 16))
    with pytest.raises(ValueError, match="conv_out"):
        loss_fn.generator_loss(torch.zeros(1, 3, 16, 16), decoder(), torch.tensor(0.0), 0)


class NoHostSync(TorchDispatchMode):
    """Records ops that copy a value from tensor to Python (`.item()`, `bool(t)`, ...)."""

    def __init__(self):
        super().__init__()
        self.syncs = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.syncs.append(func)
        return func(*args, **(kwargs or {}))


def test_losses_do_not_read_tensor_values_on_the_host():
    loss_fn = Stage1Loss(Stage1LossConfig(**SMALL_DISC))
    decoder = ToyDecoder(torch.randn(2, 5, 16, 16))
    inputs = torch.rand(2, 3, 16, 16) * 2 - 1
    with NoHostSync() as mode:
        loss, _ = loss_fn.generator_loss(inputs, decoder(), torch.tensor(0.1), 3, decoder.conv_out.weight)
        loss.backward()
        d_loss, _ = loss_fn.discriminator_loss(inputs, decoder(), 3)
        d_loss.backward()
    assert mode.syncs == []


# ------------------------------------------------------------------------ perceptual term


class StubLPIPS(nn.Module):
    """Stand-in for mvq.losses.perceptual.LPIPS: per-sample mean squared difference."""

    made_with = []

    def __init__(self, vgg_weights=None):
        super().__init__()
        StubLPIPS.made_with.append(vgg_weights)
        self.scale = nn.Parameter(torch.tensor(2.0), requires_grad=False)

    def forward(self, x, y):
        return self.scale * ((x - y) ** 2).flatten(1).mean(1)


def test_perceptual_term_is_weighted_and_kept_out_of_checkpoints(monkeypatch):
    import mvq.losses.stage1 as stage1

    monkeypatch.setattr(stage1, "LPIPS", StubLPIPS)
    loss_fn = Stage1Loss(Stage1LossConfig(**{**SMALL_DISC, "perceptual_weight": 0.5}, vgg_weights="/x/vgg.pth",
                                          disc_start=10))
    assert StubLPIPS.made_with[-1] == "/x/vgg.pth"
    x, y = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
    loss, logs = loss_fn.generator_loss(x, y, torch.tensor(0.0), 0)
    p = 2.0 * ((x - y) ** 2).mean()
    assert logs["perceptual_loss"].item() == pytest.approx(p.item(), rel=1e-6)
    assert loss.item() == pytest.approx(((x - y).abs().mean() + 0.5 * p).item(), rel=1e-6)

    state = loss_fn.state_dict()
    assert not [k for k in state if k.startswith("perceptual.")]
    assert any(k.startswith("discriminator.") for k in state)
    other = Stage1Loss(loss_fn.config)
    other.load_state_dict(state, strict=True)  # the frozen network needs no checkpoint entry
    assert torch.equal(other.discriminator.head.weight, loss_fn.discriminator.head.weight)


def test_missing_vgg_weights_stop_before_training(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    from mvq.storage.network_weights import MissingWeightsError

    with pytest.raises(MissingWeightsError, match="vgg16"):
        Stage1Loss(Stage1LossConfig(perceptual_weight=1.0))
    with pytest.raises(MissingWeightsError, match="nowhere.pth"):
        Stage1Loss(Stage1LossConfig(perceptual_weight=1.0, vgg_weights=str(tmp_path / "nowhere.pth")))


# ------------------------------------------------------------------------ config


def test_loss_config_validation_and_reference_defaults():
    with pytest.raises(ConfigError, match="disc_wieght"):
        build_dataclass(Stage1LossConfig, {"disc_wieght": 0.5}, "loss")
    with pytest.raises(ConfigError, match="disc_start"):
        Stage1LossConfig(disc_start=-1)
    reference = {"disc_start": 0, "disc_weight": 0.75, "codebook_weight": 1.0, "disc_weight_max": 1.0}
    defaults = Stage1LossConfig()
    assert {key: getattr(defaults, key) for key in reference} == reference  # the reference's defaults
