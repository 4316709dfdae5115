"""Completion and class-swap editing: `MVQPipeline.complete` and `mvq complete`."""

import numpy as np
import pytest
import torch

from tests.test_sampling import TINY_VAE, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def pipe():
    from mvq.models.mqvae import MQVAE
    from mvq.inference.pipeline import MVQPipeline

    torch.manual_seed(0)
    vae = MQVAE.from_config(TINY_VAE)
    sf = tiny_model(num_classes=3, grid_size=vae.config.grid_size, num_tokens=vae.config.num_tokens,
                    codebook_size=vae.config.codebook_size)
    return MVQPipeline(sf, vae)


def photos(count: int, size: int = 16) -> np.ndarray:
    """Smooth random colour images (uint8 B×size×size×3), different enough to tokenize differently."""
    g = torch.Generator().manual_seed(count)
    coarse = torch.rand(count, 3, 4, 4, generator=g)
    smooth = torch.nn.functional.interpolate(coarse, size=size, mode="bilinear", align_corners=False)
    return (smooth * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def test_completions_keep_the_images_own_tokens_in_the_kept_rows(pipe):
    images, keep_rows, n = photos(3), 3, 2
    g = pipe.vae.config.grid_size
    codes, positions, lengths = pipe.complete_tokens(images, keep_rows, labels=[0, 1, 2], n=n, seed=5)
    own_codes, own_positions = pipe.vae.tokenize(pipe._as_model_images(images))
    assert codes.shape == positions.shape == (3, n, pipe.stackformer.config.num_tokens)
    assert lengths.tolist() == (own_positions < keep_rows * g).sum(1).tolist()
    assert len(set(lengths.tolist())) > 1 and lengths.min() > 0  # the test covers several prefix lengths
    for i, p in enumerate(lengths.tolist()):
        for j in range(n):
            assert torch.equal(codes[i, j, :p], own_codes[i, :p])
            assert torch.equal(positions[i, j, :p], own_positions[i, :p])
            # The rest continues in raster order below the kept rows.
            assert (positions[i, j, p:] >= keep_rows * g).all()
            assert (positions[i, j, 1:] > positions[i, j, :-1]).all()
    assert not torch.equal(codes[:, 0], codes[:, 1])  # completions differ from one another


def test_complete_decodes_the_completed_tokens_and_does_not_depend_on_batching(pipe):
    from mvq.evaluation.image_metrics import to_uint8_hwc

    images = photos(3)
    out = pipe.complete(images, keep_rows=4, labels=[1], n=2, seed=3)
    assert out.shape == (3, 2, 16, 16, 3) and out.dtype == np.uint8
    codes, positions, _ = pipe.complete_tokens(images, 4, labels=1, n=2, seed=3)
    assert np.array_equal(out[2, 1], to_uint8_hwc(pipe.vae.detokenize(codes[2, 1:2], positions[2, 1:2]))[0])
    alone = pipe.complete(images[2], keep_rows=4, labels=[1], n=2, seed=3, first_image=2)
    assert np.array_equal(alone[0], out[2])


def test_cached_and_uncached_completion_agree(pipe):
    pipe.stackformer.double()
    images = photos(2)
    cached = pipe.complete_tokens(images, 2, labels=[0, 2], n=2, seed=1, top_k=None, top_p=None)
    uncached = pipe.complete_tokens(images, 2, labels=[0, 2], n=2, seed=1, top_k=None, top_p=None, use_cache=False)
    assert torch.equal(cached[0], uncached[0]) and torch.equal(cached[1], uncached[1])


def test_edge_rows_and_refusals(pipe):
    from mvq.errors import UserError

    images = photos(2)
    g = pipe.vae.config.grid_size
    codes, positions, lengths = pipe.complete_tokens(images, g, labels=0, n=1)  # every token kept
    own_codes, own_positions = pipe.vae.tokenize(pipe._as_model_images(images))
    assert torch.equal(codes[:, 0], own_codes) and torch.equal(positions[:, 0], own_positions)
    _, _, none_kept = pipe.complete_tokens(images, 0, labels=0, n=1)  # nothing kept: plain class samples
    assert none_kept.tolist() == [0, 0]
    with pytest.raises(UserError, match="keep_rows"):
        pipe.complete(images, keep_rows=g + 1, labels=0)
    with pytest.raises(UserError, match="class-conditional"):
        pipe.complete(images, keep_rows=2)
    with pytest.raises(UserError, match="3 labels for 2 images"):
        pipe.complete(images, keep_rows=2, labels=[0, 1, 2])


def test_complete_command_end_to_end(pipe, tmp_path, capsys):
    from PIL import Image

    from mvq.cli import main

    sf_dir = pipe.stackformer.float().save_pretrained(tmp_path / "sf", tokenizer=pipe.vae)
    vae_dir = pipe.vae.save_pretrained(tmp_path / "vae")
    inputs = tmp_path / "photos"
    inputs.mkdir()
    pictures = photos(2, size=24)  # not the model's 16 px: resized and centre-cropped
    for i, picture in enumerate(pictures):
        Image.fromarray(picture).save(inputs / f"p{i}.png")
    out = tmp_path / "out"
    argv = ["complete", str(inputs), "--vae", str(vae_dir), "--stackformer", str(sf_dir), "--keep-rows", "4",
            "--labels", "2", "--n", "3", "--device", "cpu", "--out", str(out)]
    main(argv)
    assert "resized" in capsys.readouterr().err
    figure = np.asarray(Image.open(out / "p0.png"))
    scale = 128 // 16
    assert figure.shape == (16 * scale + 4, 5 * (16 * scale + 2) + 2, 3)  # input, kept cells, 3 completions
    shown = 16 * scale
    pictures = [figure[2:2 + shown, 2 + i * (shown + 2):2 + i * (shown + 2) + shown] for i in range(5)]
    from mvq.data.images import load_rgb
    from mvq.data.transforms import eval_transform
    from mvq.evaluation.image_metrics import to_uint8_hwc

    model_input = to_uint8_hwc(eval_transform(16)(load_rgb(inputs / "p0.png"))[None])[0]
    assert np.array_equal(pictures[0], model_input.repeat(scale, 0).repeat(scale, 1))  # the input, enlarged
    last = np.asarray(Image.open(out / "completions" / "p0_2.png"))
    assert np.array_equal(pictures[4], last.repeat(scale, 0).repeat(scale, 1))  # then the completions
    completions = sorted(p.name for p in (out / "completions").iterdir())
    assert completions == [f"p{i}_{j}.png" for i in range(2) for j in range(3)]

    # The same completions as the pipeline's, from the same resized input.
    from mvq.inference.pipeline import MVQPipeline

    loaded = MVQPipeline.from_pretrained(sf_dir, vae_dir, device="cpu")
    image = eval_transform(16)(load_rgb(inputs / "p1.png"))[None]
    expected = loaded.complete(image, keep_rows=4, labels=2, n=3, first_image=1)[0, 2]
    assert np.array_equal(np.asarray(Image.open(out / "completions" / "p1_2.png")), expected)

    with pytest.raises(SystemExit) as refused:  # same --out safety as `mvq sample`
        main(argv)
    assert refused.value.code == 1 and "--overwrite" in capsys.readouterr().err
    unlabelled = [item for item in argv if item not in ("--labels", "2")][:-1] + [str(tmp_path / "x")]
    with pytest.raises(SystemExit):
        main(unlabelled)
    assert "class-conditional" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_demo_completion_figure(pipe, tmp_path):
    from PIL import Image

    from mvq.demo.pipeline import completion_figure, figure_scale
    from mvq.evaluation.image_metrics import from_uint8

    val_set = [{"image": from_uint8(torch.from_numpy(p).permute(2, 0, 1)), "label": i % 3}
               for i, p in enumerate(photos(5))]
    completion_figure(pipe.stackformer, pipe.vae, val_set, 3, seed=0, figures=tmp_path, count=4, per_image=3)
    figure = np.asarray(Image.open(tmp_path / "completions.png"))
    rows, columns = 4, 2 + 3  # 4 images: the input, its kept tokens, 3 completions each; labels beside them
    row_labels = [pipe.stackformer.config.class_label(c) for c in (0, 1, 2, 0)]
    scale = figure_scale(pipe.vae, columns, row_labels)  # every picture the same integer enlargement of 16 px
    size = 16 * scale
    left, top = figure.shape[1] - columns * (size + 2), figure.shape[0] - rows * (size + 2)
    assert left > 0 and top > 0  # room for the row labels and the column labels

    def picture(row: int, column: int) -> np.ndarray:  # the figure's picture there, back at 16 px
        y, x = top + row * (size + 2), left + column * (size + 2)
        return figure[y:y + size:scale, x:x + size:scale]

    for row, image in enumerate(photos(5)[:4]):  # each row starts with its input image, enlarged
        assert np.array_equal(picture(row, 0), image)
        y = top + row * (size + 2)
        assert np.array_equal(figure[y:y + size, left:left + size], image.repeat(scale, 0).repeat(scale, 1))
    completions = pipe.complete(photos(5)[:4], keep_rows=4, labels=[0, 1, 2, 0], n=3, seed=0)
    assert np.abs(picture(3, 4).astype(int) - completions[3, 2]).max() <= 1  # the last completion of the last row


def test_the_stackformer_predicts_the_class_whose_tokens_it_finds_most_likely(pipe):
    images = photos(3)
    codes, positions = pipe.vae.tokenize(pipe._as_model_images(images))
    scores = torch.stack([pipe.stackformer.log_likelihood(codes, positions, torch.full((3,), c)) for c in range(3)])
    assert torch.equal(pipe.predict_class(images), scores.argmax(0))
    one = pipe.stackformer(codes[:1], positions[:1], torch.tensor([1]))
    k = codes.shape[1]
    expected = -(one.code_loss + one.position_loss) * k  # mean losses over the K steps
    torch.testing.assert_close(scores[1, 0], expected, rtol=1e-4, atol=1e-4)


def test_a_completion_checks_the_images_once_and_refuses_bad_pixels(pipe, monkeypatch):
    from mvq.errors import UserError

    calls = []
    check = type(pipe.vae).check_images
    monkeypatch.setattr(type(pipe.vae), "check_images", lambda self, images: calls.append(1) or check(self, images))
    pipe.complete(photos(2), keep_rows=2, labels=[0, 1], n=2)
    assert len(calls) == 1  # once per tokenization: the pipeline does not check them again
    bad = torch.zeros(1, 3, 16, 16)
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(UserError, match="NaN|finite"):
        pipe.complete(bad, keep_rows=2, labels=[0])
