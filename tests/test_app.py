"""`mvq app`: upload handling and the pictures without a browser; the page itself in headless Chromium."""

from __future__ import annotations

import dataclasses
import io
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mvq.app.uploads import MAX_UPLOAD_PIXELS, prepare_upload
from mvq.app.views import completion_view, display_scale, sample_pictures, token_order_frames, tokenize_view
from mvq.cli import main
from mvq.errors import UserError
from mvq.models.card import EXAMPLES_DIR, ModelCard, example_images
from mvq.models.mqvae import MQVAE, MQVAEConfig
from mvq.models.sampling import SamplingConfig
from mvq.models.stackformer import Stackformer, StackformerConfig
from mvq.inference.pipeline import MVQPipeline, sample_generator

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1280,900"]


def tiny_models(folder: Path) -> tuple[Path, Path]:
    """A 16 px MQ-VAE (8×8 grid, 16 tokens) and a class-conditional Stackformer with guidance, random weights."""
    torch.manual_seed(0)
    vae = MQVAE(MQVAEConfig(resolution=16, ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(),
                            z_channels=64, keep_ratio=0.25, codebook_size=32, codebook_dim=16, demask_layers=1))
    c = vae.config
    stackformer = Stackformer(StackformerConfig(
        codebook_size=c.codebook_size, grid_size=c.grid_size, num_tokens=c.num_tokens, num_classes=3,
        class_dropout=0.1, code_layers=1, position_layers=1, dim=32, heads=2))
    vae_dir = vae.save_pretrained(folder / "vae")
    stackformer_dir = stackformer.save_pretrained(folder / "stackformer", tokenizer=vae)
    for model_dir in (vae_dir, stackformer_dir):
        ModelCard(name="tiny", summary="Random weights, for tests.", training_data=TINY_DATA).save(model_dir)
    (vae_dir / EXAMPLES_DIR).mkdir()
    for i, height in enumerate((16, 24, 40)):  # the app's examples: pictures of the shapes these models are for
        save(Image.fromarray(shapes_photo(height, height + 8 * i, index=i)[..., :3]), vae_dir / EXAMPLES_DIR,
             f"shapes-{i}.png")
    return vae_dir, stackformer_dir


TINY_DATA = "nothing: random weights, for tests."


def tiny_vqgan_models(folder: Path) -> tuple[Path, Path]:
    """A 16 px VQGAN (8×8 grid, a token at every cell) and a plain GPT over its tokens (no Position-Transformer)."""
    from mvq.models.vqgan import VQGAN, VQGANConfig

    torch.manual_seed(0)
    vqgan = VQGAN(VQGANConfig(resolution=16, ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(),
                              z_channels=64, codebook_size=32, codebook_dim=16))
    c = vqgan.config
    gpt = Stackformer(StackformerConfig(
        codebook_size=c.codebook_size, grid_size=c.grid_size, num_tokens=c.num_tokens, num_classes=3,
        class_dropout=0.1, code_layers=1, position_layers=0, dim=32, heads=2))
    return vqgan.save_pretrained(folder / "vqgan"), gpt.save_pretrained(folder / "gpt", tokenizer=vqgan)


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory) -> tuple[Path, Path]:
    """Tiny random models, or trained ones named by MVQ_APP_MODELS: "zoo" (what `mvq app` serves with no
    folders) or a `mvq demo` output folder."""
    trained = os.environ.get("MVQ_APP_MODELS")
    if trained == "zoo":
        from mvq.models.zoo import first_pair

        return first_pair()
    if trained:
        return Path(trained) / "mqvae", Path(trained) / "stackformer"
    return tiny_models(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def pipeline(model_dirs) -> MVQPipeline:
    vae_dir, stackformer_dir = model_dirs
    return MVQPipeline.from_pretrained(stackformer_dir, vae_dir, device="cpu")


def save(image: Image.Image, folder: Path, name: str) -> Path:
    path = folder / name
    image.save(path)
    return path


def shapes_photo(height: int, width: int, index: int = 0) -> np.ndarray:
    """An RGBA picture of the demo's shapes (what its models know), centred on a wider canvas of its background."""
    from mvq.data.synthetic import SyntheticShapes

    image = (SyntheticShapes(index + 1, resolution=height, split="val").render(index)[0] * 255).round().astype(np.uint8)
    photo = np.empty((height, width, 4), dtype=np.uint8)
    photo[..., :3], photo[..., 3] = image[0, 0], 255
    left = (width - height) // 2
    photo[:, left:left + height, :3] = image
    return photo


# --- uploads -------------------------------------------------------------------------------------------------

def test_upload_is_fitted_to_the_model_and_says_so(tmp_path):
    pixels = np.zeros((30, 60, 3), dtype=np.uint8)
    pixels[:, 20:40] = 200  # the centre third: what a centre crop keeps
    upload = prepare_upload(save(Image.fromarray(pixels), tmp_path, "wide.png"), 16)
    assert upload.pixels.shape == (16, 16, 3) and upload.pixels.dtype == np.uint8
    assert upload.pixels[:, 4:12].min() > 150 and upload.pixels[:, :2].max() < 50
    assert any("60×30" in note and "16×16" in note and "crop" in note for note in upload.notes)
    same_size = prepare_upload(save(Image.fromarray(pixels[:16, :16]), tmp_path, "fits.png"), 16)
    assert same_size.notes == [] and np.array_equal(same_size.pixels, pixels[:16, :16])


def test_upload_is_fitted_as_the_command_line_fits_images(tmp_path):
    """The demo tokenizes exactly the tensor `mvq reconstruct` and `mvq complete` make of the same file."""
    from mvq.data.images import load_rgb
    from mvq.data.transforms import eval_transform
    from mvq.evaluation.image_metrics import from_uint8_hwc

    photo = np.random.default_rng(3).integers(0, 256, (23, 37, 3), dtype=np.uint8)
    path = save(Image.fromarray(photo), tmp_path, "photo.png")
    upload = prepare_upload(path, 16)
    assert torch.equal(from_uint8_hwc(upload.pixels)[0], eval_transform(16)(load_rgb(path)))


def test_upload_with_alpha_or_16_bits_is_converted_with_a_note(tmp_path):
    rgba = np.zeros((16, 16, 4), dtype=np.uint8)
    rgba[..., 0] = 255
    rgba[:8, :, 3] = 255  # top half opaque red, bottom half transparent
    upload = prepare_upload(save(Image.fromarray(rgba, "RGBA"), tmp_path, "alpha.png"), 16)
    assert any("transparen" in note for note in upload.notes)
    assert upload.pixels[:8].tolist() == [[[255, 0, 0]] * 16] * 8
    assert upload.pixels[8:].min() == 255  # composited onto white

    deep = np.full((16, 16), 65535 // 2, dtype=np.uint16)
    upload = prepare_upload(save(Image.fromarray(deep), tmp_path, "deep.png"), 16)
    assert any("16-bit" in note for note in upload.notes)
    assert abs(int(upload.pixels.mean()) - 127) <= 1  # scaled, not clipped to white

    # 48-bit colour PNG (Pillow decodes it to 8 bits itself): still said
    rows = b"".join(b"\x00" + np.full((16, 3), 40000, dtype=">u2").tobytes() for _ in range(16))
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    path = tmp_path / "rgb48.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 16, 16, 16, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
    upload = prepare_upload(path, 16)
    assert any("16-bit" in note for note in upload.notes) and upload.pixels.min() == round(40000 / 257)


@pytest.mark.parametrize("content, message", [(b"", "empty"), (b"hello, not an image", "not an image"),
                                              (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "not an image")])
def test_upload_that_is_not_an_image_is_refused_in_one_line(tmp_path, content, message):
    path = tmp_path / "upload.png"
    path.write_bytes(content)
    with pytest.raises(UserError, match=message) as info:
        prepare_upload(path, 16)
    assert "\n" not in str(info.value)


def test_upload_truncated_image_is_refused(tmp_path):
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, "PNG")
    path = tmp_path / "cut.png"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(UserError, match="damaged or truncated"):
        prepare_upload(path, 16)


def test_huge_upload_is_refused_before_decoding(tmp_path):
    side = int(MAX_UPLOAD_PIXELS ** 0.5) + 8
    path = save(Image.new("1", (side, side)), tmp_path, "huge.png")  # 1-bit: small to write
    with pytest.raises(UserError, match="megapixels"):
        prepare_upload(path, 16)


# --- pictures ------------------------------------------------------------------------------------------------

def test_tokenize_view_shows_kept_cells_scores_and_reconstruction(pipeline):
    vae = pipeline.vae
    r, scale = vae.config.resolution, display_scale(vae.config.resolution)
    pixels = np.random.default_rng(0).integers(0, 256, (r, r, 3), dtype=np.uint8)
    view = tokenize_view(vae, pixels)
    for picture in (view.model_input, view.kept_cells, view.scores, view.reconstruction):
        assert picture.shape == (r * scale, r * scale, 3) and picture.dtype == np.uint8
    assert np.array_equal(view.model_input[::scale, ::scale], pixels)
    assert (view.num_tokens, view.num_cells) == (vae.config.num_tokens, vae.config.num_cells)
    with torch.no_grad():
        out = vae(torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 127.5 - 1)
    expected = ((out.reconstruction.clamp(-1, 1) + 1) * 127.5).round()
    mse = (expected - torch.from_numpy(pixels).permute(2, 0, 1).float()).pow(2).mean()
    assert view.psnr == pytest.approx(float(10 * torch.log10(255.0 ** 2 / mse)), abs=1e-3)
    # kept cells keep their pixels, masked ones are darkened
    cell = r // vae.config.grid_size * scale
    kept = out.keep_mask[0].repeat_interleave(cell, 0).repeat_interleave(cell, 1).numpy()
    assert np.array_equal(view.kept_cells[kept], view.model_input[kept])
    assert (view.kept_cells[~kept].astype(int) <= view.model_input[~kept]).all()


def test_samples_and_token_order_frames_show_the_same_first_sample(pipeline):
    sampling = SamplingConfig(cfg_scale=2.0)
    r = pipeline.vae.config.resolution
    scale = display_scale(r)
    samples = sample_pictures(pipeline, 5, 1, seed=3, sampling=sampling)
    assert samples.shape == (5, r * scale, r * scale, 3) and samples.dtype == np.uint8
    first = pipeline(labels=[1], seed=3, sampling=sampling)[0].repeat(scale, 0).repeat(scale, 1)
    # the same tokens (batch-independent sampling); decoding in another batch may move a value by 1
    assert np.abs(samples[0].astype(int) - first).max() <= 1

    frames = token_order_frames(pipeline, 1, seed=3, sampling=sampling, frames=4)
    g, k = pipeline.vae.config.grid_size, pipeline.vae.config.num_tokens
    assert frames.pictures.shape == (4, r * scale, r * scale, 3) and frames.num_cells == g * g
    assert frames.tokens == [k * (i + 1) // 4 for i in range(4)]
    cell = r * scale // g

    def cells(picture: np.ndarray) -> np.ndarray:  # → g×g×(cell·cell·3) pixel values of each cell
        return picture.reshape(g, cell, g, cell, 3).transpose(0, 2, 1, 3, 4).reshape(g, g, -1).astype(int)

    codes, positions = pipeline.stackformer.generate(1, labels=[1], sampling=sampling,
                                                     generator=[sample_generator(3, 0)])
    for picture, steps in zip(frames.pictures, frames.tokens):
        with torch.no_grad():
            prefix = pipeline.vae.detokenize(codes[:, :steps], positions[:, :steps])
        decoded = cells(((prefix[0].clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
                        .repeat(scale, 0).repeat(scale, 1))
        frame = cells(picture)
        placed = np.zeros(g * g, dtype=bool)
        placed[positions[0, :steps].numpy()] = True
        placed = placed.reshape(g, g)
        assert np.abs(frame[placed] - decoded[placed]).max() <= 1  # the first `steps` tokens, decoded
        assert np.abs(frame[~placed] - decoded[~placed] * 0.25).max() <= 1  # cells without a token: darkened
    assert placed.sum() == k and np.abs(frame[placed] - cells(first)[placed]).max() <= 1  # all K: the sample


def test_token_order_captions_say_why_cells_stay_dark(pipeline):
    from mvq.app.page import _token_order_captions

    frames = token_order_frames(pipeline, 0, seed=0, sampling=SamplingConfig(), frames=4)
    k, n = pipeline.vae.config.num_tokens, pipeline.vae.config.num_cells
    captions = [caption for _, caption in _token_order_captions(frames)]
    assert captions[0] == f"first {k // 4} of {k} tokens"
    assert captions[-1] == f"all {k} tokens: the other {n - k} cells never get one (the decoder fills them in)"


def test_token_order_frames_run_in_the_pipelines_precision(pipeline):
    from mvq.models.sampling import SamplingConfig

    bf16 = MVQPipeline(pipeline.stackformer, pipeline.vae, precision="bf16")
    seen = set()
    layers = [next(m for m in model.modules() if isinstance(m, kind))
              for model, kind in ((bf16.stackformer, torch.nn.Linear), (bf16.vae.decoder, torch.nn.Conv2d))]
    hooks = [layer.register_forward_hook(lambda module, inputs, output: seen.add((module, output.dtype)))
             for layer in layers]
    try:
        token_order_frames(bf16, 0, seed=1, sampling=SamplingConfig(), frames=2)
    finally:
        for hook in hooks:
            hook.remove()
    assert seen == {(layer, torch.bfloat16) for layer in layers}  # generation and decoding alike


def test_vqgan_and_plain_gpt_generate_without_the_token_order_frames(tmp_path):
    """A VQGAN decodes only full grids and a plain GPT fills them in raster order: no token-order frames, and no error."""
    from mvq.app.page import generate_handler
    from mvq.app.views import shows_token_order

    vqgan_dir, gpt_dir = tiny_vqgan_models(tmp_path)
    pipe = MVQPipeline.from_pretrained(gpt_dir, vqgan_dir, device="cpu")
    assert not shows_token_order(pipe)
    with pytest.raises(UserError, match="token-order frames need an MQ-VAE"):
        token_order_frames(pipe, 0, seed=0, sampling=SamplingConfig())
    generate = generate_handler(pipe)
    samples, frames, status = generate(label="1", seed=0, count=2, cfg_scale=1.0, temperature=1.0, top_k=10,
                                       top_p=0.9, position_temperature=1.0, position_top_k=5, position_top_p=0.9,
                                       show_order=True)
    assert len(samples) == 2 and frames is None and "2 samples (class 1" in status


@pytest.mark.parametrize("token_order", ["rank", "raster"])
def test_generate_takes_a_token_count_from_a_rank_order_stackformer(tmp_path, token_order):
    """Generate's token count: k tokens per sample are the first k of the full sample, so its frames end at k;
    the model's own count (the slider's default, all a raster-order model offers) samples as before."""
    from mvq.app.page import generate_handler

    vae_dir, stackformer_dir = tiny_models(tmp_path)
    config = Stackformer.from_pretrained(stackformer_dir).config
    torch.manual_seed(1)
    ranked = Stackformer(dataclasses.replace(config, token_order=token_order))
    pipe = MVQPipeline(ranked, MQVAE.from_pretrained(vae_dir))
    controls = dict(label="1", seed=3, count=2, cfg_scale=1.0, temperature=1.0, top_k=0, top_p=1.0,
                    position_temperature=1.0, position_top_k=0, position_top_p=1.0, show_order=True)
    generate = generate_handler(pipe)
    full, full_frames, _ = generate(**controls)
    same, _, status = generate(**controls, num_tokens=config.num_tokens)
    assert all(np.array_equal(a, b) for (a, _), (b, _) in zip(full, same)) and "tokens each" not in status
    part, frames, status = generate(**controls, num_tokens=5)
    assert len(part) == 2 and "5 tokens each" in status
    assert frames[-1][1] == "all 5 tokens: the other 59 cells never get one (the decoder fills them in)"
    assert full_frames[-1][1].startswith(f"all {config.num_tokens} tokens")
    assert not all(np.array_equal(a, b) for (a, _), (b, _) in zip(full, part))


@pytest.mark.slow
def test_app_serves_a_vqgan_folder_alone_or_with_its_gpt(tmp_path, monkeypatch):
    """The page (built, not served) of a VQGAN; with a plain GPT the token-order checkbox is off and locked."""
    pytest.importorskip("gradio", reason="the app needs the optional extra mvq[app] (pip install 'mvq[app]')")
    import mvq.app.page

    vqgan_dir, gpt_dir = tiny_vqgan_models(tmp_path)
    served = []
    monkeypatch.setattr(mvq.app.page, "serve", lambda app, host, port: served.append(app))
    main(["app", "--vae", str(vqgan_dir), "--device", "cpu"])
    main(["app", "--vae", str(vqgan_dir), "--stackformer", str(gpt_dir), "--device", "cpu"])
    assert len(served) == 2
    boxes = [block for block in served[1].blocks.values() if getattr(block, "elem_id", None) == "generate-show-order"]
    assert len(boxes) == 1 and boxes[0].value is False and boxes[0].interactive is False


def test_completion_view_shows_input_kept_rows_and_completions(pipeline):
    r, g = pipeline.vae.config.resolution, pipeline.vae.config.grid_size
    scale = display_scale(r)
    pixels = np.random.default_rng(1).integers(0, 256, (r, r, 3), dtype=np.uint8)
    sampling = SamplingConfig(cfg_scale=2.0)
    view = completion_view(pipeline, pixels, keep_rows=3, label=2, seed=5, count=2, sampling=sampling)
    assert view.pictures.shape == (4, r * scale, r * scale, 3)
    pictures = [picture[::scale, ::scale] for picture in view.pictures]
    assert np.array_equal(pictures[0], pixels)
    expected = pipeline.complete(pixels, 3, labels=2, n=2, seed=5, sampling=sampling)[0]
    assert np.array_equal(np.stack(pictures[2:]), expected)
    codes, positions = pipeline.vae.tokenize(torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 127.5 - 1)
    assert view.kept_tokens == int((positions < 3 * g).sum())
    # The second picture shows the cells of the kept tokens (the image's own, in its first 3 grid rows) as they
    # are, as `mvq complete` and the demo do; every other cell, in the kept rows too, is darkened.
    kept_cells = np.zeros(g * g, dtype=bool)
    kept_cells[positions[0][positions[0] < 3 * g].numpy()] = True
    kept = kept_cells.reshape(g, g).repeat(r // g, 0).repeat(r // g, 1)
    assert kept.any() and not kept[:3 * r // g].all()  # some cells of the kept rows are masked
    assert np.abs(pictures[1][kept].astype(int) - pixels[kept]).max() <= 1
    assert (pictures[1][~kept].astype(int) <= pixels[~kept] // 4 + 1).all()  # darkened


def test_page_handlers_answer_bad_input_with_a_message(pipeline, tmp_path):
    from mvq.app.page import generate_handler, tokenize_handler

    tokenize = tokenize_handler(pipeline.vae)
    assert tokenize(None)[-1] == "Upload an image first, or click an example."
    not_image = tmp_path / "notes.jpg"
    not_image.write_text("hello")
    pictures, summary, status = tokenize(str(not_image))
    assert pictures is None and summary == "" and "not an image" in status

    generate = generate_handler(pipeline)
    defaults = dict(label="0", seed=0, count=2, cfg_scale=1.0, temperature=1.0, top_k=10, top_p=0.9,
                    position_temperature=1.0, position_top_k=5, position_top_p=0.9, show_order=False)
    for bad, message in [(dict(seed=-1), "seed"), (dict(seed=1.5), "seed"), (dict(seed=1e20), "from 0 to 4294967295"),
                         (dict(label=None), "choose a class"),
                         (dict(label="7"), "labels"), (dict(temperature=0.0), "temperature")]:
        samples, frames, status = generate(**{**defaults, **bad})
        assert samples is None and frames is None and message in status, (bad, status)
    samples, frames, status = generate(**defaults)
    assert len(samples) == 2 and frames is None and "2 samples (class 0, seed 0)" in status


def test_classes_are_shown_by_name(pipeline, monkeypatch):
    import dataclasses

    from mvq.app.page import generate_handler

    named = dataclasses.replace(pipeline.stackformer.config, class_names=("circle", "square", "cross"))
    monkeypatch.setattr(pipeline.stackformer, "config", named)
    _, _, status = generate_handler(pipeline)(label="2", seed=0, count=1, cfg_scale=1.0, temperature=1.0, top_k=10,
                                              top_p=0.9, position_temperature=1.0, position_top_k=5,
                                              position_top_p=0.9, show_order=False)
    assert "class 2 (cross)" in status


def test_completion_says_what_keeping_no_row_or_every_row_means(pipeline, tmp_path):
    from PIL import Image

    from mvq.app.page import complete_handler

    path = tmp_path / "photo.png"
    Image.new("RGB", (16, 16), (40, 160, 90)).save(path)
    complete = complete_handler(pipeline)
    g = pipeline.vae.config.grid_size
    _, none_kept = complete(str(path), 0, "1", 0, 2, 1.0)
    assert "new samples from scratch, not completions" in none_kept and "0 tokens" not in none_kept
    _, all_kept = complete(str(path), g, "1", 0, 2, 1.0)
    assert f"Kept all {g} rows" in all_kept and "Keep fewer rows" in all_kept
    _, some = complete(str(path), 2, "1", 0, 2, 1.0)
    assert f"first 2 rows of the {g}-row token grid; 2 completions of the rest" in some


def test_completion_defaults_to_the_images_own_class_and_names_a_swap(pipeline, tmp_path):
    from PIL import Image

    from mvq.app.page import OWN_CLASS, complete_handler

    path = tmp_path / "photo.png"
    Image.new("RGB", (16, 16), (200, 60, 90)).save(path)
    own = int(pipeline.predict_class(np.asarray(Image.open(path).convert("RGB")))[0])
    complete = complete_handler(pipeline)
    _, status = complete(str(path), 2, OWN_CLASS, 0, 1, 1.0)
    assert f"Completed as the image's own class, {own}" in status
    other = (own + 1) % pipeline.num_classes
    _, swapped = complete(str(path), 2, str(other), 0, 1, 1.0)
    assert f"Class-swap editing: completed as class {other}, while the image looks like class {own}" in swapped


# --- command line --------------------------------------------------------------------------------------------

def test_app_without_models_says_which_folders_to_pass(tmp_path, monkeypatch, capsys):
    import mvq.models.hub

    monkeypatch.setattr(mvq.models.hub, "zoo_dirs", lambda: [])  # no zoo pair to serve either
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        main(["app"])
    assert info.value.code == 1
    err = capsys.readouterr().err.strip()
    assert "--vae DIR" in err and "mvq demo" in err and "demo-output" in err and "\n" not in err
    with pytest.raises(SystemExit):
        main(["app", "--stackformer", str(tmp_path)])
    assert "--stackformer needs --vae" in capsys.readouterr().err


# --- the page in a real browser ------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def browser():
    pytest.importorskip("gradio", reason="the app needs the optional extra mvq[app] (pip install 'mvq[app]')")
    pytest.importorskip("selenium", reason="the browser test needs selenium (pip install 'mvq[app]')")
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver_path):
        pytest.skip("headless Chromium is not installed (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    with tempfile.TemporaryDirectory() as profile:
        options.add_argument(f"--user-data-dir={profile}")
        driver = webdriver.Chrome(options=options, service=Service(driver_path))
        try:
            yield driver
        finally:
            driver.quit()


@pytest.fixture(scope="module")
def app_url(model_dirs, tmp_path_factory):
    """`mvq app` on a free local port, as a user starts it."""
    vae_dir, stackformer_dir = model_dirs
    port = free_port()
    env = {**os.environ, "GRADIO_TEMP_DIR": str(tmp_path_factory.mktemp("gradio"))}
    server = subprocess.Popen([sys.executable, "-m", "mvq.cli", "app", "--vae", str(vae_dir), "--stackformer",
                               str(stackformer_dir), "--port", str(port), "--device", "cpu"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 90
        while True:
            if server.poll() is not None:
                pytest.fail(f"mvq app exited with {server.returncode}:\n{server.stdout.read()}")
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("mvq app did not answer within 90 s")
                time.sleep(0.25)
        yield url
        assert server.poll() is None, "the server stopped while the page was used"
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


class Page:
    """Drives the app's page: elements by their ids, waits for outputs, reads output images back."""

    def __init__(self, driver, screenshots: Path):
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        self.driver, self.by, self.screenshots = driver, By, screenshots
        self.wait = WebDriverWait(driver, 20, poll_frequency=0.1)

    def element(self, elem_id: str):
        return self.driver.find_element(self.by.ID, elem_id)

    def open_tab(self, name: str) -> None:
        self.driver.find_element(self.by.XPATH, f"//button[@role='tab' and normalize-space()='{name}']").click()

    def upload(self, elem_id: str, path: Path, status_id: str | None = None) -> None:
        """Upload `path`; with `status_id`, also wait until the page has taken it (its results cleared)."""
        box = self.element(elem_id)
        for clear in box.find_elements(self.by.CSS_SELECTOR, "button[aria-label=Clear]"):  # a previous upload
            clear.click()
        self.wait.until(lambda _: box.find_elements(self.by.CSS_SELECTOR, "input[type=file]"))
        box.find_element(self.by.CSS_SELECTOR, "input[type=file]").send_keys(str(path))
        self.wait.until(lambda _: box.find_elements(self.by.CSS_SELECTOR, f"[aria-label='{path.name}']"))
        if status_id is not None:
            self.wait.until(lambda _: "New image: press" in self.element(status_id).text)

    def image_src(self, elem_id: str) -> str | None:
        found = self.element(elem_id).find_elements(self.by.CSS_SELECTOR, "img")
        return found[0].get_attribute("src") if found else None

    def gallery(self, elem_id: str) -> list[tuple[str, str]]:
        """A gallery's pictures: (address, caption) each, in order (read again if the page redraws it meanwhile)."""
        from selenium.common.exceptions import StaleElementReferenceException

        for attempt in range(10):
            try:
                items = self.element(elem_id).find_elements(self.by.CSS_SELECTOR, "button.thumbnail-item")
                return [(item.find_element(self.by.CSS_SELECTOR, "img").get_attribute("src"),
                         item.find_element(self.by.CSS_SELECTOR, ".caption-label").text) for item in items]
            except StaleElementReferenceException:
                time.sleep(0.2)
        raise AssertionError(f"the gallery {elem_id} kept being redrawn")

    def click_example(self, elem_id: str, index: int, results_id: str) -> None:
        """Click example `index` and wait until the results gallery shows new pictures."""
        before = self.image_src(results_id)
        self.element(elem_id).find_elements(self.by.CSS_SELECTOR, "button.thumbnail-item")[index].click()
        self.wait.until(lambda _: self.image_src(results_id) not in (None, before))

    def element_visible(self, elem_id: str) -> bool:
        from selenium.common.exceptions import StaleElementReferenceException

        try:
            found = self.driver.find_elements(self.by.ID, elem_id)
            return bool(found) and found[0].is_displayed()
        except StaleElementReferenceException:  # redrawn meanwhile: the next poll looks again
            return True

    def click_and_wait(self, button_id: str, status_id: str, image_ids: list[str], expect: str) -> str:
        """Press a button, wait for `expect` in the status line and new images; return the status text."""
        before = {i: self.image_src(i) for i in image_ids}
        self.element(button_id).click()
        self.wait.until(lambda _: expect in self.element(status_id).text)
        if image_ids:
            self.wait.until(lambda _: all(self.image_src(i) not in (None, before[i]) for i in image_ids))
        return self.element(status_id).text

    def picture(self, src: str) -> Image.Image:
        with urllib.request.urlopen(src, timeout=10) as response:
            image = Image.open(io.BytesIO(response.read()))
            image.load()
        return image

    def screenshot(self, name: str) -> None:
        self.screenshots.mkdir(parents=True, exist_ok=True)
        self.driver.set_window_size(1280, 900)
        height = self.driver.execute_script("return document.documentElement.scrollHeight")
        self.driver.set_window_size(1280, height + 160)  # the whole page in one picture
        shot = Image.open(io.BytesIO(self.driver.get_screenshot_as_png())).convert("RGB")
        shot.quantize(64).save(self.screenshots / f"{name}.png", optimize=True)  # small enough for a README


@pytest.mark.slow
def test_app_in_a_real_browser(browser, app_url, model_dirs, pipeline, tmp_path):
    from mvq.app.page import FIRST_STEP

    screenshots = Path(os.environ.get("MVQ_APP_SCREENSHOTS") or tmp_path / "screenshots")
    page = Page(browser, screenshots)
    browser.get(app_url)
    page.wait.until(lambda _: page.element("tokenize-status").text == FIRST_STEP)  # the page has loaded
    r, k = pipeline.vae.config.resolution, pipeline.vae.config.num_tokens
    shown = r * display_scale(r)
    intro = page.element("introduction").text  # a newcomer reads first what the models are, do, and learnt from
    assert "MQ-VAE" in intro and "Stackformer" in intro and f"{k} tokens" in intro
    if not os.environ.get("MVQ_APP_MODELS"):
        assert f"Both were trained on {TINY_DATA}" in intro

    # Tokenize: an example, clicked, is tokenized at once, with a caption under each picture.
    examples = page.gallery("tokenize-examples")
    assert [caption for _, caption in examples] == [p.stem for p in example_images(model_dirs[0])] and examples
    started = time.monotonic()
    page.click_example("tokenize-examples", 1, "tokenize-results")
    assert time.monotonic() - started < 2.0, "an example's result took 2 s or more"
    results = page.gallery("tokenize-results")
    assert [caption.split(":")[0].split(" (")[0] for _, caption in results] == [
        "What the model sees", "Kept cells", "Importance scores", f"Reconstruction from {k} tokens"]
    assert all(page.picture(src).size == (shown, shown) for src, _ in results)
    assert examples[1][1] in page.element("tokenize-upload").text  # the upload box holds the example
    assert page.element("tokenize-score-scale").find_elements(page.by.CSS_SELECTOR, "img")  # the colour scale
    assert "least important" in page.element("tokenize-score-scale").text
    page.screenshot("tokenize")

    # Bad uploads get a message on the page, and the server keeps serving; a new upload clears the results.
    not_image = tmp_path / "notes.png"
    not_image.write_text("not an image")
    page.upload("tokenize-upload", not_image, "tokenize-status")
    assert page.gallery("tokenize-results") == []
    page.click_and_wait("tokenize-button", "tokenize-status", [], "not an image")
    photo = shapes_photo(48, 80)
    photo[:10, :, 3] = 0
    page.upload("tokenize-upload", save(Image.fromarray(photo, "RGBA"), tmp_path, "photo.png"), "tokenize-status")
    status = page.click_and_wait("tokenize-button", "tokenize-status", ["tokenize-results"], "transparen")
    assert "80×48" in status and f"{r}×{r}" in status
    assert f"{k} tokens" in page.element("tokenize-summary").text and "PSNR" in page.element("tokenize-summary").text

    # Generate: the example setting, clicked, samples at once; the token-order frames say why cells stay dark.
    page.open_tab("Generate")
    page.element("generate-examples").find_element(page.by.CSS_SELECTOR, "tbody tr td").click()
    page.wait.until(lambda _: "samples" in page.element("generate-status").text)
    status = page.element("generate-status").text
    assert "8 samples (class 0" in status and "seed 0" in status
    samples, frames = page.gallery("generate-samples"), page.gallery("generate-order")
    assert [caption for _, caption in samples] == [f"sample {i + 1} · class {pipeline.stackformer.config.class_label(0)}"
                                                   for i in range(8)]
    assert all(page.picture(src).size == (shown, shown) for src, _ in samples)
    assert len(frames) == 8 and "cells never get one" in frames[-1][1]
    page.screenshot("generate")
    page.element("generate-show-order").find_element(page.by.CSS_SELECTOR, "input").click()  # untick: no empty box
    page.click_and_wait("generate-button", "generate-status", [], "samples")
    page.wait.until(lambda _: not page.element_visible("generate-order"))

    # Complete: an example, clicked, completed as its own class; every picture captioned.
    page.open_tab("Complete")
    page.click_example("complete-examples", 0, "complete-results")
    page.wait.until(lambda _: "completions" in page.element("complete-status").text)
    status = page.element("complete-status").text
    assert "first 4 rows" in status and "4 completions" in status and "the image's own class" in status
    captions = [caption for _, caption in page.gallery("complete-results")]
    assert captions[0] == "Input" and captions[1].startswith("Kept: ") and len(captions) == 6
    assert captions[2].startswith("completion 1")
    page.upload("complete-upload", save(Image.fromarray(photo[..., :3]), tmp_path, "rgb.png"), "complete-status")
    status = page.click_and_wait("complete-button", "complete-status", ["complete-results"], "completions")
    page.screenshot("complete")
    # A new upload clears the previous file's results: nothing of rgb.png stays beside other.png.
    page.upload("complete-upload", save(Image.fromarray(photo[::-1, :, :3]), tmp_path, "other.png"),
                "complete-status")
    assert page.gallery("complete-results") == [] and "completions" not in page.element("complete-status").text


@pytest.mark.slow
def test_app_on_a_port_in_use_says_so(app_url, model_dirs):
    port = app_url.rstrip("/").rsplit(":", 1)[1]
    result = subprocess.run([sys.executable, "-m", "mvq.cli", "app", "--vae", str(model_dirs[0]), "--port", port,
                             "--device", "cpu"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert f"cannot serve on 127.0.0.1:{port}" in result.stderr and "--port" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_page_introduces_its_models(pipeline, monkeypatch):
    import dataclasses

    from mvq.app.page import introduction

    named = dataclasses.replace(pipeline.stackformer.config, class_names=("circle", "square", "cross"))
    monkeypatch.setattr(pipeline.stackformer, "config", named)
    text = introduction(pipeline.vae, pipeline)
    c = pipeline.vae.config
    assert f"into {c.num_tokens} tokens" in text and f"{c.grid_size}×{c.grid_size} grid" in text
    assert "trained on 3 classes: circle, square, cross" in text and "Stackformer" in text
    assert "Stackformer" not in introduction(pipeline.vae, None)


def test_psnr_is_put_in_words():
    from mvq.app.page import psnr_words

    assert [psnr_words(db) for db in (40.0, 30.0, 24.0, 8.0)] == [
        "hard to tell from the input", "close: small differences in fine detail",
        "recognisable, with visible loss of detail", "far from the input: the shapes and colours change"]


@pytest.mark.slow
def test_tokenize_takes_a_budget_or_a_psnr_target(pipeline, tmp_path):
    from mvq.app.page import tokenize_handler
    from mvq.models.keep_budget import psnr_at_least, smallest_keep

    vae = pipeline.vae
    path = save(Image.fromarray(shapes_photo(16, 16, index=1)[..., :3]), tmp_path, "shape.png")
    tokenize = tokenize_handler(vae)
    pictures, summary, _ = tokenize(str(path), 5, 0)
    assert "**5 tokens**" in summary and pictures[1][1].startswith("Kept cells: 5 of")
    image = torch.from_numpy(np.asarray(Image.open(path).convert("RGB"))).permute(2, 0, 1)[None].float() / 127.5 - 1
    with torch.no_grad():
        reachable = float(tokenize_view(vae, np.asarray(Image.open(path).convert("RGB")), keep=vae.config.num_cells).psnr)
    target = reachable - 0.5
    expected = int(smallest_keep(vae, image, psnr_at_least(target))[0][0])
    _, summary, _ = tokenize(str(path), 5, target)  # the target overrides the slider
    assert f"**{expected} tokens**" in summary and f"reach {target:g} dB" in summary
    _, summary, _ = tokenize(str(path), 5, 99.0)
    assert "99 dB is out of reach" in summary and f"**{vae.config.num_cells} tokens**" in summary


@pytest.mark.slow
def page_load_texts(app) -> list:
    """What the page-load event puts in its outputs, through gradio's own handling of a function's return."""
    import asyncio

    (load,) = [f for f in app.fns.values() if any(event == "load" for _, event in f.targets)]
    return asyncio.run(app.postprocess_data(load, load.fn(), None))


def test_page_load_greets_every_tokenize_tab():
    """One tab or several: each status line shows the first step when the page opens (a one-tab page once got a tuple)."""
    pytest.importorskip("gradio", reason="the app needs the optional extra mvq[app] (pip install 'mvq[app]')")
    from mvq.app.page import FIRST_STEP, ExtraTokenizer, build_app

    vae = MQVAE(MQVAEConfig(resolution=16, ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(),
                            z_channels=64, keep_ratio=0.25, codebook_size=8, codebook_dim=4, demask_layers=1))
    assert page_load_texts(build_app(vae, None)) == [FIRST_STEP]
    two_tabs = build_app(vae, None, more_tokenizers=[ExtraTokenizer("photos", vae)])
    assert page_load_texts(two_tabs) == [FIRST_STEP, FIRST_STEP]


def test_app_serves_a_zoo_tokenizer_and_its_stackformer_by_default(tmp_path, monkeypatch, capsys):
    pytest.importorskip("gradio", reason="the app needs the optional extra mvq[app] (pip install 'mvq[app]')")
    import mvq.app.page
    import mvq.models.hub
    from mvq.models.zoo import first_pair as zoo_pair

    zoo = tmp_path / "zoo"
    vae_dir, stackformer_dir = tiny_models(zoo)
    other_tokenizer, other = tiny_vqgan_models(tmp_path / "elsewhere")  # a generator of another tokenizer: never paired
    import shutil

    shutil.copytree(other, zoo / "a-gpt")
    monkeypatch.setattr(mvq.models.hub, "zoo_dirs", lambda: [zoo])  # this zoo alone, not the repository's too
    monkeypatch.chdir(tmp_path)  # no demo-output here
    assert zoo_pair() == (vae_dir, stackformer_dir)
    assert MVQPipeline.from_pretrained("stackformer", device="cpu").vae.config == MVQPipeline.from_pretrained(
        stackformer_dir, vae_dir, device="cpu").vae.config  # one name: its tokenizer found in the zoo
    served = []
    monkeypatch.setattr(mvq.app.page, "serve", lambda app, host, port: served.append(app))
    main(["app", "--device", "cpu"])
    assert len(served) == 1 and f"mvq app: MQ-VAE {vae_dir}, Stackformer {stackformer_dir}" in capsys.readouterr().out
    assert not any(getattr(block, "elem_id", None) == "tab-tokenize-photos" for block in served[0].blocks.values())

    # Another zoo tokenizer gets a Tokenize tab of its own, wired to that model (its GPT leaves first: with
    # its tokenizer in the zoo, that pair would come first by name).
    shutil.rmtree(zoo / "a-gpt")
    shutil.copytree(other_tokenizer, zoo / "photos")
    main(["app", "--device", "cpu"])
    assert f'mvq app: VQGAN {zoo / "photos"} in the tab "Tokenize with photos"' in capsys.readouterr().out
    blocks = {getattr(block, "elem_id", None): block for block in served[-1].blocks.values()}
    assert {"tab-tokenize", "tab-tokenize-photos", "tokenize-photos-upload", "tokenize-upload"} <= set(blocks)
    assert "Tokenize with photos" in blocks["introduction"].value
    (handler,) = [f.fn for f in served[-1].fns.values()  # what the tab's button runs
                  if (blocks["tokenize-photos-button"]._id, "click") in f.targets]
    assert [f.inputs[0] for f in served[-1].fns.values() if f.fn is handler][0] is blocks["tokenize-photos-upload"]
    photo = save(Image.fromarray(shapes_photo(16, 16)[..., :3]), tmp_path, "photo.png")
    _, summary, status = handler(str(photo))
    assert "**64 tokens**" in summary and "Error" not in status  # the VQGAN's 8×8 grid, not the MQ-VAE's 16 tokens
    shutil.rmtree(stackformer_dir)  # a tokenizer alone in the zoo: no pair, so the demo's models (absent here)
    assert zoo_pair() is None
    with pytest.raises(SystemExit):
        main(["app", "--device", "cpu"])
    assert "mvq demo" in capsys.readouterr().err
