"""Data sources beyond image folders: torchvision's dataset classes and crops of photographs."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from mvq.config import ConfigError, build_dataclass
from mvq.data import DataConfig, build_dataset
from mvq.data.build import dataset_from_path
from mvq.errors import UserError
from mvq.inference.tokenizing import declared_num_classes

# ------------------------------------------------------------------------ torchvision


def write_idx(path, array: np.ndarray) -> None:
    """An IDX file (the MNIST / Fashion-MNIST format): magic (0, 0, uint8 = 8, ndim), sizes, bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = bytes([0, 0, 8, array.ndim]) + np.asarray(array.shape, ">i4").tobytes()
    path.write_bytes(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def fashion_root(tmp_path):
    """A tiny Fashion-MNIST in torchvision's layout: 5 training and 3 test images, 28×28 grey."""
    rng = np.random.default_rng(0)
    raw = tmp_path / "FashionMNIST" / "raw"
    for prefix, n in (("train", 5), ("t10k", 3)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(1, 256, (n, 28, 28)))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10 + (prefix == "t10k"))
    return tmp_path


def fashion_config(root, **overrides):
    return build_dataclass(DataConfig, {"dataset": "torchvision", "torchvision_class": "FashionMNIST",
                                        "root": str(root), "resolution": 32, "fit": "pad", **overrides}, "data")


def test_torchvision_fashion_mnist_is_padded_to_rgb_with_labels(fashion_root):
    train = build_dataset(fashion_config(fashion_root), "train", augment=False)
    val = build_dataset(fashion_config(fashion_root), "val")
    assert (len(train), len(val)) == (5, 3)
    assert declared_num_classes(train) == 10 and train.classes[0] == "T-shirt/top"
    assert [train[i]["label"] for i in range(5)] == [0, 1, 2, 3, 4]
    assert [val[i]["label"] for i in range(3)] == [1, 2, 3]
    raw = (fashion_root / "FashionMNIST" / "raw" / "train-images-idx3-ubyte").read_bytes()[16:]
    first = torch.from_numpy(np.frombuffer(raw, np.uint8)[:784].reshape(28, 28).copy()).float() / 127.5 - 1
    image = train[0]["image"]
    assert image.shape == (3, 32, 32)
    assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])  # grey as RGB
    torch.testing.assert_close(image[0, 2:30, 2:30], first)  # centred, pixels unchanged
    assert (image[:, :2] == -1).all() and (image[:, :, 30:] == -1).all()  # black padding

    cropped = build_dataset(fashion_config(fashion_root, fit="crop", resolution=16), "val")
    assert cropped[0]["image"].shape == (3, 16, 16)
    limited = build_dataset(fashion_config(fashion_root, max_val_images=2), "val")
    assert len(limited) == 2 and declared_num_classes(limited) == 10


def test_torchvision_missing_files_name_what_torchvision_expects(tmp_path):
    (tmp_path / "FashionMNIST" / "raw").mkdir(parents=True)
    write_idx(tmp_path / "FashionMNIST" / "raw" / "train-images-idx3-ubyte", np.zeros((1, 28, 28)))
    with pytest.raises(UserError) as caught:
        build_dataset(fashion_config(tmp_path), "train")
    message = str(caught.value)
    assert "missing 3 of its 4 files" in message and "never downloads" in message
    assert str(tmp_path / "FashionMNIST" / "raw" / "t10k-labels-idx1-ubyte") in message
    assert "train-images-idx3-ubyte," not in message  # the file that is there is not listed
    with pytest.raises(UserError, match="cifar-10-batches-py/data_batch_1"):
        build_dataset(fashion_config(tmp_path, torchvision_class="CIFAR10"), "train")


def test_torchvision_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="data.torchvision_class must be one of CIFAR10"):
        build_dataclass(DataConfig, {"dataset": "torchvision", "root": str(tmp_path)}, "data")
    with pytest.raises(ConfigError, match="data.fit must be one of crop, pad"):
        fashion_config(tmp_path, fit="stretch")


def test_torchvision_config_as_data_argument(fashion_root, tmp_path):
    config = tmp_path / "fashion.yaml"
    config.write_text(f"data:\n  dataset: torchvision\n  torchvision_class: FashionMNIST\n  root: {fashion_root}\n"
                      "  resolution: 32\n  fit: pad\n")
    dataset = dataset_from_path(config, "train", 32)
    assert len(dataset) == 5 and dataset[4]["label"] == 4


# ------------------------------------------------------------------------ photo crops


def gradient_photo(width, height, seed):
    """A horizontal red ramp (0 at the left, 255 at the right) with random green and blue."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    pixels[..., 0] = np.linspace(0, 255, width).round().astype(np.uint8)
    return Image.fromarray(pixels)


@pytest.fixture
def photos_root(tmp_path):
    root = tmp_path / "photos"
    for split, names in (("train", ["a", "b"]), ("val", ["c"])):
        for i, name in enumerate(names):
            (root / split).mkdir(parents=True, exist_ok=True)
            gradient_photo(120 + 20 * i, 80, seed=i).save(root / split / f"{name}.png")
    return root


def photo_config(root, **overrides):
    return build_dataclass(DataConfig, {"dataset": "photos", "root": str(root), "resolution": 16,
                                        "crops_per_image": 3, "val_crops_per_image": 4, **overrides}, "data")


def test_training_crops_are_random_and_n_per_photo(photos_root):
    train = build_dataset(photo_config(photos_root), "train")
    assert len(train) == 6 and train.path(5 // 3).name == "b.png"
    torch.manual_seed(0)
    crops = [train[0]["image"] for _ in range(4)]
    assert all(c.shape == (3, 16, 16) and c.min() >= -1 and c.max() <= 1 for c in crops)
    assert any(not torch.equal(crops[0], c) for c in crops[1:])
    assert train[0]["label"] == -1


def test_several_photo_folders_are_used_together(photos_root, tmp_path):
    from mvq.config import ConfigError

    other = tmp_path / "more"
    for split in ("train", "val"):
        (other / split).mkdir(parents=True)
        gradient_photo(100, 90, seed=7).save(other / split / "z.png")
    both = dataclasses.replace(photo_config(photos_root), root=[str(photos_root), str(other)])
    train, val = build_dataset(both, "train"), build_dataset(both, "val")
    assert [train.path(i).name for i in range(3)] == ["a.png", "b.png", "z.png"] and len(val) == 2 * 4
    assert torch.equal(val[0]["image"], build_dataset(photo_config(photos_root), "val")[0]["image"])
    with pytest.raises(ConfigError, match="only 'photos' takes a list"):
        build_dataclass(DataConfig, {"dataset": "folder", "root": [str(photos_root), str(other)]}, "data")


def test_validation_crops_are_the_same_every_time(photos_root):
    val = build_dataset(photo_config(photos_root), "val")
    again = build_dataset(photo_config(photos_root), "val")
    assert len(val) == 4
    backwards = [again[i]["image"] for i in reversed(range(4))][::-1]
    for i in range(4):
        assert torch.equal(val[i]["image"], backwards[i])
    assert not torch.equal(val[0]["image"], val[1]["image"])
    other_seed = build_dataset(photo_config(photos_root, seed=1), "val")
    assert not torch.equal(val[0]["image"], other_seed[0]["image"])


def test_crop_scale_sets_the_crop_side(photos_root):
    whole = build_dataset(photo_config(photos_root, crop_scale=[1.0, 1.0]), "val")
    ramp = whole[0]["image"][0]  # red channel: a crop of 80 px of the 120 px ramp spans 2/3 of its range
    assert 1.0 < float(ramp.max() - ramp.min()) < 1.5
    small = build_dataset(photo_config(photos_root, crop_scale=[0.25, 0.25]), "val")
    ramp = small[0]["image"][0]  # 20 px of 120: about 1/6 of the range
    assert 0.2 < float(ramp.max() - ramp.min()) < 0.5


def test_photo_config_errors(photos_root):
    with pytest.raises(ConfigError, match="data.crop_scale must be"):
        photo_config(photos_root, crop_scale=[0.5, 0.2])
    with pytest.raises(ConfigError, match="crops_per_image"):
        photo_config(photos_root, crops_per_image=0)
    with pytest.raises(ConfigError, match="data.root is required"):
        build_dataclass(DataConfig, {"dataset": "photos"}, "data")
