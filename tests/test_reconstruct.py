"""`mvq reconstruct`: outputs named by input-relative path, refusals, notices."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mvq.cli import main
from mvq.models.mqvae import MQVAE
from tests.conftest import TINY_MQVAE


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    import torchvision.utils  # noqa: F401  (the command's lazy imports, paid once here)

    folder = tmp_path_factory.mktemp("vae")
    MQVAE.from_config(TINY_MQVAE).save_pretrained(folder)
    return folder


def write_image(path, colour, size=(32, 32)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def reconstruct(*args) -> int:
    with pytest.raises(SystemExit) as done:
        main(["reconstruct", *map(str, args)])
    return done.value.code


def test_same_file_names_in_different_folders_do_not_overwrite_each_other(vae_dir, tmp_path, capsys):
    images = tmp_path / "images"
    write_image(images / "A" / "a.png", (250, 10, 10))
    write_image(images / "B" / "a.png", (10, 10, 250))
    write_image(images / "A" / "b.png", (10, 250, 10))
    assert reconstruct("--vae", vae_dir, images, "--out", tmp_path / "out") == 0
    written = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.png"))
    assert written == sorted(["grid.png"] + [f"{stem}_{kind}.png" for stem in ("A/a", "A/b", "B/a")
                                             for kind in ("reconstruction", "keep_mask", "scores")])
    red = np.asarray(Image.open(tmp_path / "out" / "A" / "a_reconstruction.png"), dtype=float)
    blue = np.asarray(Image.open(tmp_path / "out" / "B" / "a_reconstruction.png"), dtype=float)
    assert np.abs(red - blue).mean() > 1  # two different inputs, two different outputs
    assert "wrote 3 reconstructions" in capsys.readouterr().out


def test_files_given_one_by_one_keep_paths_relative_to_the_folder_they_share(vae_dir, tmp_path, capsys):
    images = tmp_path / "images"
    write_image(images / "A" / "a.png", (250, 10, 10))
    write_image(images / "B" / "a.png", (10, 10, 250))
    assert reconstruct("--vae", vae_dir, images / "A" / "a.png", images / "B" / "a.png",
                       "--out", tmp_path / "files") == 0
    assert (tmp_path / "files" / "A" / "a_scores.png").is_file()
    assert (tmp_path / "files" / "B" / "a_scores.png").is_file()
    assert "wrote 2 reconstructions" in capsys.readouterr().out


def test_same_stem_with_other_extensions_get_their_own_outputs(vae_dir, tmp_path, capsys):
    write_image(tmp_path / "in" / "a.png", (250, 10, 10))
    write_image(tmp_path / "in" / "a.jpg", (10, 10, 250))
    assert reconstruct("--vae", vae_dir, tmp_path / "in", "--out", tmp_path / "out") == 0
    names = sorted(p.name for p in (tmp_path / "out").glob("*_reconstruction.png"))
    assert names == ["a.jpg_reconstruction.png", "a.png_reconstruction.png"]
    assert "wrote 2 reconstructions" in capsys.readouterr().out


def test_a_non_empty_out_folder_is_refused_without_overwrite(vae_dir, tmp_path, capsys):
    write_image(tmp_path / "in" / "x.png", (200, 100, 0))
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert reconstruct("--vae", vae_dir, tmp_path / "in", "--out", out) == 1
    assert "not empty" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert reconstruct("--vae", vae_dir, tmp_path / "in", "--out", out, "--overwrite") == 0
    assert (out / "x_reconstruction.png").is_file() and (out / "notes.txt").read_text() == "mine"


def test_inputs_of_another_size_are_resized_with_one_notice(vae_dir, tmp_path, capsys):
    write_image(tmp_path / "in" / "wide.png", (200, 100, 0), size=(64, 40))
    write_image(tmp_path / "in" / "tall.png", (0, 100, 200), size=(20, 50))
    write_image(tmp_path / "in" / "exact.png", (0, 100, 0))
    assert reconstruct("--vae", vae_dir, tmp_path / "in", "--out", tmp_path / "out") == 0
    err = capsys.readouterr().err
    assert err.count("resized") == 1 and "2 of 3 images are not 32×32" in err
    with Image.open(tmp_path / "out" / "wide_reconstruction.png") as image:
        assert image.size == (32, 32)


def test_folder_link_loops_are_read_once(vae_dir, tmp_path, capsys):
    from mvq.data.discovery import FolderLinkWarning

    write_image(tmp_path / "in" / "a.png", (250, 10, 10))
    write_image(tmp_path / "in" / "sub" / "b.png", (10, 10, 250))
    (tmp_path / "in" / "sub" / "loop").symlink_to(tmp_path / "in", target_is_directory=True)
    with pytest.warns(FolderLinkWarning):
        assert reconstruct("--vae", vae_dir, tmp_path / "in", "--out", tmp_path / "out") == 0
    assert "wrote 2 reconstructions" in capsys.readouterr().out
