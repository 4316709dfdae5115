"""Datasets: synthetic shapes, image reading and skipping, ImageNet / FFHQ / folder layouts."""

import io
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from mvq.config import ConfigError, build_dataclass
from mvq.data import DataConfig, SkippedFilesWarning, build_dataset, folder_dataset, load_rgb
from mvq.data.synthetic import SHAPE_KINDS, SyntheticShapes, signed_distance
from mvq.data.discovery import FolderLinkWarning, list_files
from mvq.data.transforms import eval_transform
from mvq.errors import UserError

# ------------------------------------------------------------------------ synthetic


def test_synthetic_is_deterministic_by_seed_split_and_index():
    a = SyntheticShapes(50, resolution=32, seed=3)
    b = SyntheticShapes(50, resolution=32, seed=3)
    later = b[7]  # order of access must not matter
    first = b[2]
    assert torch.equal(a[7]["image"], later["image"]) and torch.equal(a[2]["image"], first["image"])
    assert torch.equal(a[7]["mask"], later["mask"]) and a[7]["label"] == later["label"]
    assert not torch.equal(a[7]["image"], a[8]["image"])
    assert not torch.equal(a[7]["image"], SyntheticShapes(50, 32, seed=4)[7]["image"])
    assert not torch.equal(a[7]["image"], SyntheticShapes(50, 32, seed=3, split="val")[7]["image"])


def test_synthetic_items_have_the_promised_types_and_ranges():
    data = SyntheticShapes(20, resolution=48, seed=0)
    for i in range(len(data)):
        item = data[i]
        image, mask = item["image"], item["mask"]
        assert image.dtype == torch.float32 and image.shape == (3, 48, 48)
        assert image.min() >= -1.0 and image.max() <= 1.0
        assert mask.dtype == torch.float32 and mask.shape == (1, 48, 48)
        assert set(mask.unique().tolist()) <= {0.0, 1.0} and mask.sum() > 0
        assert isinstance(item["label"], int) and 0 <= item["label"] < len(SHAPE_KINDS)
    with pytest.raises(IndexError):
        data[20]


def test_synthetic_labels_and_masks_agree_with_the_shapes():
    data = SyntheticShapes(120, resolution=64, seed=1)
    single_shape_checked = 0
    for i in range(len(data)):
        background, shapes = data.layout(i)
        image, mask, label = data.render(i)
        # away from every shape's edge band the image is the flat background colour
        xs, ys = np.meshgrid(np.arange(64) + 0.5, np.arange(64) + 0.5)
        outside = np.all([signed_distance(s, xs, ys) > 0.5 for s in shapes], axis=0)
        np.testing.assert_allclose(image[outside], np.broadcast_to(background, image[outside].shape), atol=1e-6)
        largest = max(shapes, key=lambda s: s.area)
        assert label == largest.kind == data[i]["label"]
        assert largest is shapes[-1]  # the main shape is drawn last, fully visible
        # the largest shape's centre is foreground and carries its colour
        cx, cy = int(largest.x), int(largest.y)
        assert mask[cy, cx]
        np.testing.assert_allclose(image[cy, cx], largest.colour, atol=1e-5)
        # the mask covers at least the main shape and at most all shapes (plus edge pixels)
        area = mask.sum()
        assert area >= 0.9 * largest.area
        assert area <= 1.1 * sum(s.area for s in shapes)
        if len(shapes) == 1:
            assert abs(area - largest.area) <= 0.08 * largest.area
            single_shape_checked += 1
        # no background pixel has the main shape's colour (edge pixels are at most half-way)
        background = image[~mask]
        assert np.abs(background - np.asarray(largest.colour)).max(axis=1).min() > 0.05
    assert single_shape_checked > 10


def test_synthetic_classes_are_balanced_and_contrasted():
    data = SyntheticShapes(400, resolution=32, seed=0)
    counts = np.bincount([data.label(i) for i in range(len(data))], minlength=len(SHAPE_KINDS))
    assert counts.min() >= 60, counts  # 100 expected per class
    # foreground and background are well separated in brightness on average
    fg, bg = [], []
    for i in range(40):
        item = data[i]
        value = item["image"].max(0).values
        fg.append(value[item["mask"][0] > 0].mean())
        bg.append(value[item["mask"][0] == 0].mean())
    assert torch.stack(fg).mean() - torch.stack(bg).mean() > 0.5


def test_build_dataset_from_config_and_config_errors():
    config = build_dataclass(DataConfig, {"dataset": "synthetic", "resolution": 32, "num_train": 12,
                                          "num_val": 6, "seed": 5, "max_val_images": 4}, "data")
    train, val = build_dataset(config, "train"), build_dataset(config, "val")
    assert len(train) == 12 and len(val) == 4
    assert torch.equal(train[3]["image"], SyntheticShapes(12, 32, seed=5)[3]["image"])
    batch = next(iter(DataLoader(train, batch_size=4)))
    assert batch["image"].shape == (4, 3, 32, 32) and batch["label"].dtype == torch.int64
    assert batch["mask"].shape == (4, 1, 32, 32)
    with pytest.raises(ConfigError, match="resolutoin"):
        build_dataclass(DataConfig, {"resolutoin": 32}, "data")
    with pytest.raises(ConfigError, match="data.root is required"):
        DataConfig(dataset="imagenet")
    with pytest.raises(ConfigError, match="cifar"):
        DataConfig(dataset="cifar")
    with pytest.raises(ValueError, match="split"):
        build_dataset(config, "test")


# ------------------------------------------------------------------------ reading files


def save(image, path, **kwargs):
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)
    return path


def rgb_image(width=40, height=30, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def jpeg_bytes(image):
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def test_unreadable_files_are_skipped_and_named(tmp_path):
    for i in range(3):
        save(rgb_image(seed=i), tmp_path / f"good{i}.png")
    save(rgb_image(seed=9), tmp_path / "good3.jpg")
    (tmp_path / "broken.jpg").write_bytes(jpeg_bytes(rgb_image(64, 64, seed=4))[:1500])  # truncated
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("not an image\n")
    (tmp_path / ".hidden").write_text("ignored silently\n")

    with pytest.warns(SkippedFilesWarning) as caught:
        data = folder_dataset(tmp_path, resolution=16, train=True)
    message = " ".join(str(w.message) for w in caught)
    for name in ("broken.jpg", "empty.png", "notes.txt"):
        assert name in message
    assert "skipped 3 of 7 files" in message and ".hidden" not in message
    assert len(data) == 4
    assert sorted(p.name for p, _ in data.skipped) == ["broken.jpg", "empty.png", "notes.txt"]
    reasons = dict((p.name, r) for p, r in data.skipped)
    assert "truncated" in reasons["broken.jpg"] and reasons["empty.png"] == "empty file"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the remaining files load without any warning
        items = [data[i] for i in range(len(data))]
    assert all(item["image"].shape == (3, 16, 16) and item["label"] == -1 for item in items)


def test_header_only_check_falls_back_when_a_file_fails_later(tmp_path):
    save(rgb_image(seed=1), tmp_path / "a.png")
    (tmp_path / "b.jpg").write_bytes(jpeg_bytes(rgb_image(64, 64, seed=2))[:1500])
    save(rgb_image(seed=3), tmp_path / "c.png")
    data = folder_dataset(tmp_path, resolution=16, train=False, check="open")
    assert len(data) == 3  # the truncated file passes a header check
    with pytest.warns(SkippedFilesWarning, match="b.jpg"):
        item = data[1]
    torch.testing.assert_close(item["image"], data[2]["image"])  # the next file stands in


@pytest.mark.parametrize("mode", ["L", "1", "RGBA", "P", "CMYK", "I;16"])
def test_image_modes_become_rgb(tmp_path, mode):
    base = rgb_image(32, 24, seed=5)
    if mode == "RGBA":
        image = base.convert("RGBA")
        image.putpixel((0, 0), (10, 20, 30, 0))  # fully transparent: composited onto white
        path = save(image, tmp_path / "x.png")
    elif mode == "P":
        image = base.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
        image.info["transparency"] = image.getpixel((0, 0))
        path = save(image, tmp_path / "x.png", transparency=image.getpixel((0, 0)))
    elif mode == "CMYK":
        path = save(base.convert("CMYK"), tmp_path / "x.jpg")
    elif mode == "I;16":
        values = np.full((24, 32), 65535, np.uint16)
        values[:, :16] = 32768
        values[0, 0] = 0
        path = save(Image.fromarray(values), tmp_path / "x.png")
    else:
        path = save(base.convert(mode), tmp_path / "x.png")
    assert Image.open(path).mode != "RGB"

    rgb = load_rgb(path)
    assert rgb.mode == "RGB" and rgb.size == (32, 24)
    pixels = np.asarray(rgb)
    if mode in ("RGBA", "P"):
        assert tuple(pixels[0, 0]) == (255, 255, 255)
    if mode == "I;16":  # 16-bit values are scaled to 8 bits, not clipped
        assert tuple(pixels[0, 0]) == (0, 0, 0)
        assert tuple(pixels[5, 5]) == (128, 128, 128) and tuple(pixels[5, 20]) == (255, 255, 255)
    if mode == "CMYK":
        assert np.abs(pixels.astype(int) - np.asarray(base).astype(int)).mean() < 20
    tensor = eval_transform(16)(rgb)
    assert tensor.shape == (3, 16, 16) and tensor.min() >= -1 and tensor.max() <= 1


def test_eval_crop_is_the_centre_and_training_crops_vary(tmp_path):
    # 64×32: red | green | blue columns; the centre square after resizing is all green
    pixels = np.zeros((32, 64, 3), np.uint8)
    pixels[:, :8, 0] = 255
    pixels[:, 8:56, 1] = 255
    pixels[:, 56:, 2] = 255
    path = save(Image.fromarray(pixels), tmp_path / "stripes" / "x.png")
    val = folder_dataset(tmp_path / "stripes", resolution=16, train=False)
    image = val[0]["image"]
    assert torch.allclose(image[1], torch.ones(16, 16)) and torch.allclose(image[0], -torch.ones(16, 16))
    assert torch.equal(val[0]["image"], image)

    save(rgb_image(48, 32, seed=6), path)
    train = folder_dataset(tmp_path / "stripes", resolution=16, train=True)
    torch.manual_seed(0)
    crops = [train[0]["image"] for _ in range(8)]
    assert any(not torch.equal(crops[0], c) for c in crops[1:])
    assert all(c.shape == (3, 16, 16) for c in crops)


# ------------------------------------------------------------------------ layouts


def test_imagenet_layout(tmp_path):
    for synset, count in (("n02000000", 2), ("n01000000", 3), ("n03000000", 1)):
        for i in range(count):
            save(rgb_image(20, 24, seed=i), tmp_path / "train" / synset / f"{synset}_{i}.JPEG")
    save(rgb_image(seed=7), tmp_path / "val" / "n03000000" / "v0.JPEG")
    save(rgb_image(seed=8), tmp_path / "val" / "n01000000" / "v1.JPEG")
    config = DataConfig(dataset="imagenet", root=str(tmp_path), resolution=16, num_workers=2)

    train = build_dataset(config, "train")
    assert train.classes == ["n01000000", "n02000000", "n03000000"]
    labels = {p.parent.name: int(train.labels[i]) for i, p in enumerate(train.files)}
    assert labels == {"n01000000": 0, "n02000000": 1, "n03000000": 2}
    assert len(train) == 6 and train[0]["image"].shape == (3, 16, 16)

    val = build_dataset(config, "val")  # classes follow train's synsets even where val lacks some
    assert sorted((p.name, int(l)) for p, l in zip(val.files, val.labels)) == [("v0.JPEG", 2), ("v1.JPEG", 0)]
    assert [val[i]["label"] for i in range(2)] == [0, 2]

    limited = build_dataset(DataConfig(dataset="imagenet", root=str(tmp_path), resolution=16, max_val_images=1), "val")
    assert len(limited) == 1
    with pytest.raises(FileNotFoundError, match="ImageNet"):
        build_dataset(DataConfig(dataset="imagenet", root=str(tmp_path / "nowhere")), "train")

    flat = tmp_path / "flat"  # validation images not yet sorted into synset folders
    save(rgb_image(seed=1), flat / "train" / "n01000000" / "a.JPEG")
    save(rgb_image(seed=2), flat / "val" / "ILSVRC2012_val_00000001.JPEG")
    with pytest.raises(FileNotFoundError, match="one folder per synset"):
        build_dataset(DataConfig(dataset="imagenet", root=str(flat), resolution=16), "val")


def test_imagenet_files_outside_synset_folders_are_reported(tmp_path):
    save(rgb_image(seed=1), tmp_path / "train" / "n01" / "a.JPEG")
    save(rgb_image(seed=2), tmp_path / "train" / "stray.JPEG")
    with pytest.warns(SkippedFilesWarning, match="stray.JPEG"):
        data = build_dataset(DataConfig(dataset="imagenet", root=str(tmp_path), resolution=16), "train")
    assert len(data) == 1


def test_ffhq_layout(tmp_path):
    for i in range(6):
        save(rgb_image(32, 32, seed=i), tmp_path / "FFHQ" / f"{i:05d}.png")
    (tmp_path / "assets").mkdir()
    (tmp_path / "assets" / "ffhqtrain.txt").write_text("00000.png\n00001.png\n00002.png\n00003.png\n")
    (tmp_path / "assets" / "ffhqvalidation.txt").write_text("00004.png\n00005.png\n00099.png\n")
    config = DataConfig(dataset="ffhq", root=str(tmp_path), resolution=16)

    train = build_dataset(config, "train")
    assert [p.name for p in train.files] == ["00000.png", "00001.png", "00002.png", "00003.png"]
    assert train[0]["label"] == -1 and train[0]["image"].shape == (3, 16, 16)
    with pytest.warns(SkippedFilesWarning, match="00099.png"):
        val = build_dataset(config, "val")
    assert len(val) == 2
    # evaluation is deterministic; training crops are random
    assert torch.equal(val[0]["image"], val[0]["image"])
    torch.manual_seed(0)
    assert any(not torch.equal(train[0]["image"], train[0]["image"]) for _ in range(5))

    (tmp_path / "assets" / "ffhqtrain.txt").unlink()
    with pytest.raises(FileNotFoundError, match="ffhqtrain.txt"):
        build_dataset(config, "train")


def test_folder_with_class_subfolders_and_splits(tmp_path):
    for cls, count in (("dogs", 2), ("cats", 3)):
        for i in range(count):
            save(rgb_image(seed=i), tmp_path / "pets" / cls / "deeper" / f"{i}.png")
    pets = folder_dataset(tmp_path / "pets", 16, train=True)
    assert pets.classes == ["cats", "dogs"]
    assert sorted(int(l) for l in pets.labels) == [0, 0, 0, 1, 1]

    save(rgb_image(seed=9), tmp_path / "pets" / "loose.png")  # an image outside the class folders
    assert set(folder_dataset(tmp_path / "pets", 16, train=True).labels.tolist()) == {-1}

    for split, names in (("train", ["a", "b"]), ("val", ["a"])):
        for name in names:
            save(rgb_image(seed=len(name)), tmp_path / "split" / split / name / "x.png")
    train = folder_dataset(tmp_path / "split", 16, train=True)
    val = folder_dataset(tmp_path / "split", 16, train=False)
    assert train.classes == val.classes == ["a", "b"] and (len(train), len(val)) == (2, 1)
    assert val.files[0].parts[-3] == "val"

    config = DataConfig(dataset="folder", root=str(tmp_path / "split"), resolution=16)
    assert len(build_dataset(config, "val")) == 1
    with pytest.raises(FileNotFoundError, match="no readable images"):
        (tmp_path / "none").mkdir()
        folder_dataset(tmp_path / "none", 16, train=True)


# ------------------------------------------------------------------------ file discovery


def test_symlink_loop_is_read_once_and_reported(tmp_path):
    root = tmp_path / "images"
    save(rgb_image(seed=1), root / "a.png")
    save(rgb_image(seed=2), root / "sub" / "b.png")
    (root / "sub" / "loop").symlink_to(root, target_is_directory=True)
    with pytest.warns(FolderLinkWarning, match="loop"):
        data = folder_dataset(root, 16, train=True)
    assert sorted(p.name for p in data.files) == ["a.png", "b.png"]


@pytest.mark.timeout(60)
def test_two_symlink_loops_do_not_hang(tmp_path):
    root = tmp_path / "images"
    save(rgb_image(seed=1), root / "x" / "a.png")
    save(rgb_image(seed=2), root / "y" / "b.png")
    (root / "x" / "up").symlink_to(root, target_is_directory=True)
    (root / "y" / "up").symlink_to(root, target_is_directory=True)
    with pytest.warns(FolderLinkWarning, match="2 folder link"):
        data = folder_dataset(root, 16, train=True)
    assert len(data) == 2 and data.classes == ["x", "y"]


def test_linked_folders_are_followed_once_per_real_folder(tmp_path):
    save(rgb_image(seed=3), tmp_path / "elsewhere" / "c.png")
    root = tmp_path / "images"
    save(rgb_image(seed=1), root / "a.png")
    (root / "link1").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (root / "link2").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    with pytest.warns(FolderLinkWarning, match="link2"):
        files = list_files(root)
    assert [p.relative_to(root).as_posix() for p in files] == ["a.png", "link1/c.png"]


def test_an_unreadable_class_folder_is_an_error(tmp_path, monkeypatch):
    for cls in ("cats", "dogs"):
        save(rgb_image(seed=1), tmp_path / cls / "a.png")
    real_scandir = os.scandir

    def scandir(path):  # what a folder without read permission does (the tests may run as root)
        if Path(path).name == "dogs":
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(UserError, match=r"cannot read the folder .*dogs \(Permission denied\)"):
        folder_dataset(tmp_path, 16, train=True)


def test_exif_orientation_is_applied(tmp_path):
    pixels = np.zeros((8, 16, 3), np.uint8)  # 16 wide, 8 high; left half white
    pixels[:, :8] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    Image.fromarray(pixels).save(tmp_path / "photo.jpg", exif=exif.tobytes(), quality=100)
    rgb = load_rgb(tmp_path / "photo.jpg")
    assert rgb.size == (8, 16)  # shown upright: 8 wide, 16 high
    top, bottom = np.asarray(rgb)[:8].mean(), np.asarray(rgb)[8:].mean()
    assert top > 200 and bottom < 50  # the white left half is now on top


def test_dataset_from_path_reads_folders_and_configs(tmp_path, capsys):
    from mvq.data.build import dataset_from_path

    save(rgb_image(seed=1), tmp_path / "images" / "a.png")
    save(rgb_image(seed=2), tmp_path / "images" / "sub" / "b.png")
    (tmp_path / "images" / "sub" / "loop").symlink_to(tmp_path / "images", target_is_directory=True)
    with pytest.warns(FolderLinkWarning):
        folder = dataset_from_path(tmp_path / "images", "val", 16)
    assert len(folder) == 2 and folder[0]["image"].shape == (3, 16, 16)
    with pytest.raises(UserError, match="needs a resolution"):
        dataset_from_path(tmp_path / "images", "val")
    with pytest.raises(UserError, match="no such config file or image folder"):
        dataset_from_path(tmp_path / "typo", "val", 16)

    config = tmp_path / "data.yaml"
    config.write_text("data:\n  dataset: synthetic\n  resolution: 24\n  num_val: 3\n")
    assert dataset_from_path(config, "val")[0]["image"].shape == (3, 24, 24)
    assert capsys.readouterr().err == ""
    assert dataset_from_path(config, "val", 16)[0]["image"].shape == (3, 16, 16)
    assert "using resolution 16 (the model's) instead of the config's 24" in capsys.readouterr().err
    (tmp_path / "other.yaml").write_text("model:\n  resolution: 16\n")
    with pytest.raises(ConfigError, match="no 'data:' section"):
        dataset_from_path(tmp_path / "other.yaml", "val", 16)


def test_a_data_config_is_changed_on_the_command_line(tmp_path, capsys):
    """`data.root=/path` and friends: a config names where its data lie on one machine only."""
    from mvq.cli import main
    from mvq.data.build import dataset_from_path

    config = tmp_path / "data.yaml"
    config.write_text("data:\n  dataset: synthetic\n  resolution: 16\n  num_val: 3\n")
    assert len(dataset_from_path(config, "val", overrides=["data.num_val=5"])) == 5
    assert len(dataset_from_path(config, "val")) == 3  # the file itself is unchanged
    with pytest.raises(ConfigError, match="only the data section"):
        dataset_from_path(config, "val", overrides=["model.ch=4"])
    save(rgb_image(seed=1), tmp_path / "images" / "a.png")
    with pytest.raises(UserError, match="apply to a config's data section"):
        dataset_from_path(tmp_path / "images", "val", 16, overrides=["data.num_val=5"])
    stats = tmp_path / "stats.npz"
    with pytest.raises(SystemExit):  # the command line takes them (and then finds no Inception weights here)
        main(["eval", "stats", "--data", str(config), "--split", "val", "--out", str(stats), "data.num_val=2",
              "--inception-weights", str(tmp_path / "missing.pth"), "--no-progress"])
    error = capsys.readouterr().err
    assert "missing.pth" in error and "unrecognized" not in error


def test_training_data_is_listed_by_name_not_decoded(tmp_path, monkeypatch):
    import mvq.data.images as images

    save(rgb_image(seed=1), tmp_path / "a.png")
    (tmp_path / "b.JPG").write_bytes(jpeg_bytes(rgb_image(64, 64, seed=2))[:1500])  # truncated
    save(rgb_image(seed=3), tmp_path / "c.png")
    (tmp_path / "notes.txt").write_text("not an image\n")
    opened = []
    real_open = images.Image.open
    monkeypatch.setattr(images.Image, "open", lambda *a, **k: opened.append(a) or real_open(*a, **k))
    data = build_dataset(DataConfig(dataset="folder", root=str(tmp_path), resolution=16), "train")
    assert [p.name for p in data.files] == ["a.png", "b.JPG", "c.png"] and opened == []  # listed, none read
    assert [p.name for p, _ in data.skipped] == ["notes.txt"]
    with pytest.warns(SkippedFilesWarning, match="b.JPG"):
        assert data[1]["image"].shape == (3, 16, 16)  # the truncated file: the next one stands in


# --- the kept listing of a data folder --------------------------------------------------------------------------

def _tree(root, names):
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x")


def _age(root, seconds=10.0):
    """Date every folder under `root` back, as if it had last changed `seconds` ago."""
    import os
    import time

    for folder in [root, *[p for p in root.rglob("*") if p.is_dir()]]:
        then = time.time() - seconds
        os.utime(folder, (then, then))


def test_a_kept_listing_is_reused_until_a_folder_changes(tmp_path, monkeypatch):
    from mvq.data import discovery

    root = tmp_path / "data"
    _tree(root, ["a/1.png", "a/2.png", "b/3.png", "4.png"])
    _age(root)
    expected = discovery.list_files(root)
    walked = []
    walk = discovery._walk
    monkeypatch.setattr(discovery, "_walk", lambda r: walked.append(r) or walk(r))
    first = discovery.list_files(root, cache=True)
    assert first == expected and len(walked) == 1
    assert (root / discovery.LISTING_DIR / discovery.LISTING_NAME).is_file()
    assert discovery.list_files(root, cache=True) == first and len(walked) == 1  # reused: no second walk
    (root / "b" / "5.png").write_bytes(b"x")  # a new file changes its folder
    _age(root)
    again = discovery.list_files(root, cache=True)
    assert len(walked) == 2 and root / "b" / "5.png" in again and again == walk(root)[0]
    (root / discovery.LISTING_DIR / discovery.LISTING_NAME).write_text("{not json")  # damaged: listed again
    assert discovery.list_files(root, cache=True) == again and len(walked) == 3


def test_a_listing_of_a_folder_that_just_changed_is_not_trusted(tmp_path, monkeypatch):
    from mvq.data import discovery

    root = tmp_path / "data"
    _tree(root, ["a/1.png"])  # changed now: a change in the same clock tick would not show in its time
    walked = []
    walk = discovery._walk
    monkeypatch.setattr(discovery, "_walk", lambda r: walked.append(r) or walk(r))
    discovery.list_files(root, cache=True)
    (root / "a" / "2.png").write_bytes(b"x")
    assert root / "a" / "2.png" in discovery.list_files(root, cache=True) and len(walked) == 2


def test_a_read_only_folder_keeps_its_listing_in_the_user_cache(tmp_path, monkeypatch):
    import os

    from mvq.data import discovery

    root = tmp_path / "data"
    _tree(root, ["a/1.png", "b/2.png"])
    _age(root)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(os, "access", lambda path, mode: not str(path).startswith(str(root)))
    files = discovery.list_files(root, cache=True)
    assert not (root / discovery.LISTING_DIR).exists()
    kept = list((tmp_path / "cache" / "mvq" / "listings").glob("*.json"))
    assert len(kept) == 1 and files == discovery.list_files(root)
