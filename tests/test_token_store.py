"""Token stores and `mvq tokenize`: round trip, dtypes, shards, resume, flips, compatibility."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from mvq.data.token_store import (
    IncompleteStoreError,
    TokenPartWriter,
    TokenStore,
    TokenStoreHeader,
    check_compatible,
    create_store,
    part_name,
    smallest_integer_dtype,
    store_dtypes,
)
from mvq.models.mqvae import MQVAE, MQVAEConfig
from mvq.models.pretrained import weights_fingerprint
from mvq.inference.tokenizing import tokenize_dataset

TINY_VAE = dict(resolution=32, ch=16, ch_mult=[1, 2, 2], num_res_blocks=1, attn_resolutions=[], z_channels=32,
                keep_ratio=0.25, codebook_size=64, codebook_dim=16, demask_layers=1)


class ImageSet(Dataset):
    """Deterministic random images with labels i % num_classes; records which indices were read."""

    def __init__(self, n: int, num_classes: int = 3, resolution: int = 32, fail_at: int | None = None):
        g = torch.Generator().manual_seed(0)
        self.images = torch.rand(n, 3, resolution, resolution, generator=g) * 2 - 1
        self.num_classes = num_classes
        self.fail_at = fail_at
        self.read: list[int] = []

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        if self.fail_at is not None and i >= self.fail_at:
            raise KeyboardInterrupt  # stands in for a crash or Ctrl-C part-way through
        self.read.append(i)
        return {"image": self.images[i], "label": i % self.num_classes}


@pytest.fixture(scope="module")
def vae() -> MQVAE:
    torch.manual_seed(0)
    return MQVAE.from_config(TINY_VAE).eval()


def store_arrays(path) -> dict[str, np.ndarray]:
    """All rows of a store, concatenated over its parts."""
    parts = list(TokenStore(path).arrays())
    return {k: np.concatenate([p[k] for p in parts]) for k in ("codes", "positions", "labels")}


def synthetic_header(num_rows=(5,), codebook_size=300, grid_size=4, num_tokens=6, num_classes=10):
    return TokenStoreHeader(codebook_size=codebook_size, grid_size=grid_size, num_tokens=num_tokens,
                            num_classes=num_classes, part_sizes=tuple(num_rows),
                            dtypes=store_dtypes(codebook_size, grid_size ** 2, num_classes))


def random_tokens(n, header, seed):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, header.codebook_size, (n, header.num_tokens), generator=g)
    codes[0, 0] = header.codebook_size - 1  # the largest code must survive the narrow dtype
    positions = torch.rand(n, header.num_cells, generator=g).argsort(1)[:, :header.num_tokens].sort(1).values
    labels = torch.randint(-1, header.num_classes, (n,), generator=g)
    return codes, positions, labels


@pytest.mark.parametrize("low, high, expected", [
    (0, 255, "uint8"), (0, 256, "uint16"), (0, 65535, "uint16"), (0, 65536, "int32"),
    (-1, 127, "int8"), (-1, 128, "int16"), (-1, 40000, "int32"), (0, 2**40, "int64"),
])
def test_smallest_integer_dtype(low, high, expected):
    assert smallest_integer_dtype(low, high) == np.dtype(expected)


def test_store_dtypes_fit_paper_and_small_models():
    assert store_dtypes(1024, 1024, 1000) == {"codes": "uint16", "positions": "uint16", "labels": "int16"}
    assert store_dtypes(256, 64, 0) == {"codes": "uint8", "positions": "uint8", "labels": "int8"}
    assert store_dtypes(64, 256, 128)["labels"] == "int8"  # labels -1..127
    assert store_dtypes(64, 257, 129) == {"codes": "uint8", "positions": "uint16", "labels": "int16"}


def test_round_trip_synthetic_tokens(tmp_path):
    header = synthetic_header(num_rows=(7,))
    create_store(tmp_path, header)
    codes, positions, labels = random_tokens(7, header, seed=1)
    writer = TokenPartWriter(tmp_path, header, rank=0)
    writer.append(codes[:3], positions[:3], labels[:3])
    writer.append(codes[3:], positions[3:], labels[3:])

    store = TokenStore(tmp_path)
    assert len(store) == 7
    assert (store.header.codebook_size, store.header.grid_size, store.header.num_tokens,
            store.header.num_classes) == (300, 4, 6, 10)
    for i in range(7):
        item = store[i]
        assert item["codes"].dtype == torch.long and item["positions"].dtype == torch.long
        assert torch.equal(item["codes"], codes[i]) and torch.equal(item["positions"], positions[i])
        assert item["label"] == int(labels[i])
    assert torch.equal(store[-1]["codes"], codes[-1])
    with pytest.raises(IndexError):
        store[7]
    on_disk = {n: np.load(tmp_path / part_name(0, 1) / f"{n}.npy", mmap_mode="r").dtype
               for n in ("codes", "positions", "labels")}
    assert on_disk == {"codes": np.uint16, "positions": np.uint8, "labels": np.int8}

    # A DataLoader worker gets a pickled store: it must not carry the data, and must still read it.
    blob = pickle.dumps(store)
    assert len(blob) < 4096
    assert torch.equal(pickle.loads(blob)[5]["codes"], codes[5])


def test_writer_refuses_values_that_would_wrap_or_break_raster_order(tmp_path):
    header = synthetic_header(num_rows=(2,), codebook_size=256)
    create_store(tmp_path, header)
    writer = TokenPartWriter(tmp_path, header, rank=0)
    codes, positions, labels = random_tokens(2, header, seed=2)
    with pytest.raises(ValueError, match="codes must lie in"):
        writer.append(codes + 256, positions, labels)
    with pytest.raises(ValueError, match="ascending"):
        writer.append(codes, positions.flip(1), labels)
    with pytest.raises(ValueError, match="labels must lie in"):
        writer.append(codes, positions, torch.full((2,), 10))
    assert writer.done == 0


def test_missing_and_incomplete_store_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="token store not found"):
        TokenStore(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="header.json"):
        TokenStore(tmp_path / "empty")
    header = synthetic_header(num_rows=(4, 3))
    create_store(tmp_path / "s", header)
    codes, positions, labels = random_tokens(4, header, seed=3)
    TokenPartWriter(tmp_path / "s", header, rank=0).append(codes[:2], positions[:2], labels[:2])
    with pytest.raises(IncompleteStoreError, match=r"part-00000-of-00002 has 2 of 4 rows.*part-00001-of-00002 is missing"):
        TokenStore(tmp_path / "s")


def test_tokenize_round_trip_matches_model(vae, tmp_path):
    data = ImageSet(6)
    header = tokenize_dataset(vae, data, tmp_path, batch_size=4, rank=0, world_size=1, progress=False)
    codes, positions = vae.tokenize(data.images)
    store = TokenStore(tmp_path)
    assert len(store) == header.count == 6
    assert (store.header.codebook_size, store.header.grid_size, store.header.num_tokens,
            store.header.num_classes) == (64, 8, 16, 3)
    assert header.dtypes == {"codes": "uint8", "positions": "uint8", "labels": "int8"}
    assert torch.equal(torch.stack([store[i]["codes"] for i in range(6)]), codes)
    assert torch.equal(torch.stack([store[i]["positions"] for i in range(6)]), positions)
    assert [store[i]["label"] for i in range(6)] == [i % 3 for i in range(6)]
    check_compatible(store.header, vae.config, weights_fingerprint(vae))  # its own MQ-VAE: no error


def test_shards_read_as_one_store_in_dataset_order(vae, tmp_path, monkeypatch):
    data = ImageSet(7)
    tokenize_dataset(vae, data, tmp_path / "whole", batch_size=3, rank=0, world_size=1, progress=False)
    data.read.clear()
    # Rank 0 learns its place from the environment, as under torchrun; rank 1 is told explicitly.
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    tokenize_dataset(vae, data, tmp_path / "sharded", batch_size=3, progress=False)
    assert sorted(data.read) == [0, 1, 2]
    with pytest.raises(IncompleteStoreError, match="part-00001-of-00002"):
        TokenStore(tmp_path / "sharded")
    data.read.clear()
    tokenize_dataset(vae, data, tmp_path / "sharded", batch_size=3, rank=1, world_size=2, progress=False)
    assert sorted(data.read) == [3, 4, 5, 6]

    sharded, whole = TokenStore(tmp_path / "sharded"), TokenStore(tmp_path / "whole")
    assert sharded.header.part_sizes == (3, 4) and len(sharded) == 7
    for i in range(7):
        assert torch.equal(sharded[i]["codes"], whole[i]["codes"])
        assert torch.equal(sharded[i]["positions"], whole[i]["positions"])
        assert sharded[i]["label"] == whole[i]["label"] == i % 3


def test_more_ranks_than_images_leaves_empty_parts(vae, tmp_path):
    data = ImageSet(1)
    for rank in range(2):
        tokenize_dataset(vae, data, tmp_path, rank=rank, world_size=2, progress=False)
    store = TokenStore(tmp_path)
    assert store.header.part_sizes == (0, 1)
    assert torch.equal(store[0]["codes"], vae.tokenize(data.images)[0][0])


def test_undeclared_classes_are_inferred_from_labels(vae, tmp_path):
    class NoClassList(Dataset):
        def __init__(self, images, labels):
            self.images, self.labels = images, labels

        def __len__(self):
            return len(self.labels)

        def __getitem__(self, i):
            return {"image": self.images[i], "label": self.labels[i]}

    header = tokenize_dataset(vae, NoClassList(ImageSet(4).images, [1, -1, 4, 1]), tmp_path, rank=0,
                              world_size=1, progress=False)
    assert header.num_classes is None and header.dtypes["labels"] == "int32"
    store = TokenStore(tmp_path)
    assert store.header.num_classes == 5
    assert [store[i]["label"] for i in range(4)] == [1, -1, 4, 1]


def test_interrupted_then_resumed_equals_uninterrupted(vae, tmp_path):
    whole = tmp_path / "whole"
    tokenize_dataset(vae, ImageSet(10), whole, batch_size=3, flip=True, rank=0, world_size=1, progress=False)

    resumed = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        tokenize_dataset(vae, ImageSet(10, fail_at=7), resumed, batch_size=3, flip=True, rank=0, world_size=1,
                         progress=False)
    progress = json.loads((resumed / part_name(0, 1) / "progress.json").read_text())
    assert progress == {"done": 12, "size": 20}  # two full batches of 3 images, each with its flip
    with pytest.raises(IncompleteStoreError, match="12 of 20"):
        TokenStore(resumed)

    data = ImageSet(10)
    tokenize_dataset(vae, data, resumed, batch_size=3, flip=True, rank=0, world_size=1, progress=False)
    assert sorted(data.read) == list(range(6, 10))  # finished images are not encoded again
    a, b = store_arrays(whole), store_arrays(resumed)
    for name in a:
        assert a[name].dtype == b[name].dtype and np.array_equal(a[name], b[name]), name

    # Running again on a complete store changes nothing and reads no image.
    data.read.clear()
    tokenize_dataset(vae, data, resumed, batch_size=3, flip=True, rank=0, world_size=1, progress=False)
    assert data.read == []


def test_resume_refuses_other_settings(vae, tmp_path):
    data = ImageSet(4)
    tokenize_dataset(vae, data, tmp_path, rank=0, world_size=1, progress=False)
    with pytest.raises(ValueError, match="flip"):
        tokenize_dataset(vae, data, tmp_path, flip=True, rank=0, world_size=1, progress=False)
    other = MQVAE.from_config(TINY_VAE).eval()
    with pytest.raises(ValueError, match="vae"):
        tokenize_dataset(other, data, tmp_path, rank=0, world_size=1, progress=False)


@pytest.mark.slow
def test_flip_doubles_count_and_stores_tokens_of_mirrored_images(vae, tmp_path):
    data = ImageSet(5)
    tokenize_dataset(vae, data, tmp_path, flip=True, batch_size=2, rank=0, world_size=1, progress=False)
    store = TokenStore(tmp_path)
    assert len(store) == 10 and store.header.flip
    codes, positions = vae.tokenize(data.images)
    flipped_codes, flipped_positions = vae.tokenize(data.images.flip(-1))
    assert not torch.equal(flipped_positions, positions)  # mirroring changes the tokens
    for i in range(5):
        assert torch.equal(store[2 * i]["codes"], codes[i])
        assert torch.equal(store[2 * i]["positions"], positions[i])
        assert torch.equal(store[2 * i + 1]["codes"], flipped_codes[i])
        assert torch.equal(store[2 * i + 1]["positions"], flipped_positions[i])
        assert store[2 * i]["label"] == store[2 * i + 1]["label"] == i % 3


def test_check_compatible_names_the_mismatch(vae, tmp_path):
    tokenize_dataset(vae, ImageSet(2), tmp_path, rank=0, world_size=1, progress=False)
    header = TokenStore(tmp_path).header
    check_compatible(header, vae.config)
    check_compatible(json.loads((tmp_path / "header.json").read_text()), MQVAEConfig.from_mapping(TINY_VAE))
    with pytest.raises(ValueError, match="codebook_size: store 64, MQ-VAE 128"):
        check_compatible(header, MQVAEConfig.from_mapping({**TINY_VAE, "codebook_size": 128}))
    with pytest.raises(ValueError, match="grid_size: store 8, MQ-VAE 16"):
        check_compatible(header, MQVAEConfig.from_mapping({**TINY_VAE, "resolution": 64}))
    with pytest.raises(ValueError, match="num_tokens: store 16, MQ-VAE 32"):
        check_compatible(header, MQVAEConfig.from_mapping({**TINY_VAE, "keep_ratio": 0.5}))
    other = MQVAE.from_config(TINY_VAE)
    with pytest.raises(ValueError, match="other weights"):
        check_compatible(header, other.config, weights_fingerprint(other))


def test_cli_tokenize_writes_store(vae, tmp_path, monkeypatch, capsys):
    from mvq.cli import main
    from mvq.data import build

    vae.save_pretrained(tmp_path / "vae")
    data = ImageSet(3)
    calls = []

    def fake_dataset(path, split, resolution, overrides=()):
        calls.append((str(path), split, resolution))
        return data

    monkeypatch.setattr(build, "dataset_from_path", fake_dataset)
    with pytest.raises(SystemExit) as exit_info:
        main(["tokenize", "--vae", str(tmp_path / "vae"), "--data", "images/", "--out", str(tmp_path / "store"),
              "--flip", "--batch-size", "2", "--num-workers", "0", "--device", "cpu", "--split", "val"])
    assert exit_info.value.code == 0
    assert calls == [("images/", "val", 32)]
    store = TokenStore(tmp_path / "store")
    assert len(store) == 6
    assert store.header.source["split"] == "val"
    assert torch.equal(store[4]["codes"], vae.tokenize(data.images[2:3])[0][0])
    assert "6 items" in capsys.readouterr().out


def test_cli_tokenize_image_folder(vae, tmp_path):
    from PIL import Image

    import mvq.data as data_module
    from mvq.cli import main

    vae.save_pretrained(tmp_path / "vae")
    images = tmp_path / "images"
    for name, colour in [("cat/a.png", (255, 0, 0)), ("dog/b.png", (0, 0, 255)), ("dog/c.png", (0, 90, 9))]:
        (images / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (40, 48), colour).save(images / name)
    with pytest.raises(SystemExit) as exit_info:
        main(["tokenize", "--vae", str(tmp_path / "vae"), "--data", str(images), "--out", str(tmp_path / "store"),
              "--num-workers", "0", "--device", "cpu"])
    assert exit_info.value.code == 0
    store = TokenStore(tmp_path / "store")
    assert len(store) == 3 and store.header.num_classes == 2
    assert [store[i]["label"] for i in range(3)] == [0, 1, 1]
    reference = data_module.folder_dataset(images, 32, train=True, augment=False)
    codes, positions = vae.tokenize(torch.stack([reference[i]["image"] for i in range(3)]))
    assert torch.equal(torch.stack([store[i]["codes"] for i in range(3)]), codes)
    assert torch.equal(torch.stack([store[i]["positions"] for i in range(3)]), positions)


def test_cli_tokenize_config_uses_the_vae_resolution(vae, tmp_path, capsys):
    from mvq.cli import main
    from mvq.data import SHAPE_KINDS, DataConfig, build_dataset

    vae.save_pretrained(tmp_path / "vae")
    config = tmp_path / "data.yaml"
    config.write_text("data:\n  dataset: synthetic\n  resolution: 64\n  num_train: 3\n  num_val: 2\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["tokenize", "--vae", str(tmp_path / "vae"), "--data", str(config), "--out", str(tmp_path / "store"),
              "--num-workers", "0", "--device", "cpu", "--split", "val"])
    assert exit_info.value.code == 0
    assert "using resolution 32" in capsys.readouterr().err
    store = TokenStore(tmp_path / "store")
    assert len(store) == 2 and store.header.num_classes == len(SHAPE_KINDS)
    reference = build_dataset(DataConfig(resolution=32, num_train=3, num_val=2), "val", augment=False)
    codes, _ = vae.tokenize(torch.stack([reference[i]["image"] for i in range(2)]))
    assert torch.equal(torch.stack([store[i]["codes"] for i in range(2)]), codes)
    assert [store[i]["label"] for i in range(2)] == [reference[i]["label"] for i in range(2)]


@pytest.mark.slow
def test_cli_tokenize_at_a_budget_and_per_image_for_a_quality_target(vae, tmp_path, monkeypatch, capsys):
    from mvq.cli import main
    from mvq.data import build
    from mvq.models.keep_budget import psnr_at_least, smallest_keep

    vae.save_pretrained(tmp_path / "vae")
    data = ImageSet(5)
    monkeypatch.setattr(build, "dataset_from_path", lambda path, split, resolution, overrides=(): data)
    common = ["--vae", str(tmp_path / "vae"), "--data", "images/", "--batch-size", "2", "--num-workers", "0",
              "--device", "cpu"]
    with pytest.raises(SystemExit) as done:
        main(["tokenize", *common, "--keep", "5", "--out", str(tmp_path / "k5")])
    assert done.value.code == 0
    fixed = TokenStore(tmp_path / "k5")
    assert fixed.header.num_tokens == 5 and not fixed.header.variable_length
    assert torch.equal(fixed[3]["positions"], vae.tokenize(data.images[3:4], keep=5)[1][0])

    # A quality target: each image gets the fewest cells that meet it, found as smallest_keep finds them.
    target_db = 9.6  # this random model reconstructs at about 9.4-9.7 dB: some images meet it sooner than others
    with pytest.raises(SystemExit) as done:
        main(["tokenize", *common, "--quality-target", f"psnr={target_db}", "--keep", "40",
              "--out", str(tmp_path / "target")])
    assert done.value.code == 0
    store = TokenStore(tmp_path / "target")
    assert store.header.variable_length and store.header.num_tokens == 40
    assert store.header.source["quality_target"] == f"psnr={target_db}"
    expected, _ = smallest_keep(vae, data.images, psnr_at_least(target_db), high=40)
    lengths = [store[i]["length"] for i in range(len(store))]
    assert lengths == expected.tolist() and len(set(lengths)) > 1, lengths
    for i, k in enumerate(lengths):
        codes, positions = vae.tokenize(data.images[i:i + 1], keep=k)
        assert torch.equal(store[i]["codes"][:k], codes[0]) and torch.equal(store[i]["positions"][:k], positions[0])
        assert (store[i]["codes"][k:] == -1).all() and (store[i]["positions"][k:] == -1).all()
    # What needs the MQ-VAE's own K refuses a store of another budget in one line; stage 2 learns from any.
    with pytest.raises(ValueError, match="a budget per image, not the MQ-VAE's K"):
        check_compatible(store.header, vae.config)
    with pytest.raises(ValueError, match="5 tokens per image, not the MQ-VAE's K"):
        check_compatible(fixed.header, vae.config)
    for header in (store.header, fixed.header):
        check_compatible(header, vae.config, any_budget=True)
    with pytest.raises(SystemExit) as done:
        main(["tokenize", *common, "--quality-target", "ssim=0.9", "--out", str(tmp_path / "bad")])
    assert done.value.code != 0 and "psnr=DB" in capsys.readouterr().err
