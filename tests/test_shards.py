"""Tar shards: written from datasets, every sample read once per epoch across ranks and workers, resumed exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mvq.data.shards import SHARD_INDEX, ShardFiles, ShardStream, buffered_shuffle, find_shards, write_shards
from mvq.data.synthetic import SyntheticShapes
from mvq.data.transforms import eval_transform
from mvq.errors import InvalidInputError, MissingInputError, UserError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """48 synthetic 16 px images in 6 shards of 8."""
    out = tmp_path_factory.mktemp("shards") / "train"
    write_shards(SyntheticShapes(48, 16, seed=3), out, samples_per_shard=8, source={"made": "by a test"},
                 progress=False)
    return out


def stream(shards: Path, **kwargs) -> ShardStream:
    settings = {"batch_size": 4, "seed": 0, "shuffle_buffer": 6, **kwargs}
    return ShardStream(find_shards(shards), eval_transform(16), **settings)


def keys(s: ShardStream) -> list[str]:
    return [key for batch in s.loader() for key in batch["key"]]


def test_writing_records_every_sample_and_its_label(shards):
    index = json.loads((shards / SHARD_INDEX).read_text())
    assert index["num_samples"] == 48 and [s["count"] for s in index["shards"]] == [8] * 6
    assert index["classes"] == list(SyntheticShapes.classes) and index["source"] == {"made": "by a test"}
    by_index = ShardFiles(find_shards(shards), eval_transform(16))  # what tokenize and eval read
    dataset = SyntheticShapes(48, 16, seed=3)
    assert len(by_index) == 48
    for i in (0, 17, 47):  # in the written order: lossless PNGs of the images, with their labels
        assert torch.allclose(by_index[i]["image"], dataset[i]["image"], atol=1 / 127.5)
        assert by_index[i]["label"] == dataset[i]["label"]
    with pytest.raises(FileExistsError):
        write_shards(dataset, shards, progress=False)  # never over existing shards


def test_a_shards_config_trains_on_a_stream_and_evaluates_by_index(shards):
    from mvq.data.build import build_dataset
    from mvq.data.config import DataConfig

    config = DataConfig(dataset="shards", train_shards=str(shards), val_shards=str(shards), resolution=16,
                        batch_size=4, num_workers=0)
    assert isinstance(build_dataset(config, "train"), ShardStream)
    assert isinstance(build_dataset(config, "val"), ShardFiles)
    assert isinstance(build_dataset(config, "train", augment=False), ShardFiles)  # e.g. mvq tokenize


def test_the_command_writes_both_splits_and_never_over_shards(tmp_path, capsys):
    from mvq.cli import main

    config = tmp_path / "data.yaml"
    config.write_text("data:\n  dataset: synthetic\n  resolution: 16\n")
    argv = ["shards", "--data", str(config), "--out", str(tmp_path / "out"), "--samples-per-shard", "5",
            "data.num_train=12", "data.num_val=4"]
    with pytest.raises(SystemExit) as done:
        main(argv)
    assert done.value.code == 0
    assert find_shards(tmp_path / "out" / "train").counts == (5, 5, 2)
    assert find_shards(tmp_path / "out" / "val").counts == (4,)
    assert "data.dataset=shards data.root=" in capsys.readouterr().out
    with pytest.raises(SystemExit) as done:
        main(argv)
    assert done.value.code == 1 and "is not empty" in capsys.readouterr().err


def test_image_files_are_stored_as_they_are(tmp_path):
    from PIL import Image

    from mvq.data.layouts import folder_dataset

    (tmp_path / "images").mkdir()
    for name, size in (("a.jpg", (40, 30)), ("b.png", (20, 24))):
        Image.new("RGB", size, (200, 10, 10)).save(tmp_path / "images" / name)
    write_shards(folder_dataset(tmp_path / "images", 16, train=True), tmp_path / "out", progress=False)
    import tarfile

    with tarfile.open(tmp_path / "out" / "shard-000000.tar") as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    assert members["000000000.jpg"] == (tmp_path / "images" / "a.jpg").read_bytes()
    assert members["000000001.png"] == (tmp_path / "images" / "b.png").read_bytes()


def test_shards_are_found_by_folder_pattern_or_glob(shards):
    by_folder = find_shards(shards)
    assert by_folder.total == 48 and len(by_folder.urls) == 6 and by_folder.classes == tuple(SyntheticShapes.classes)
    by_pattern = find_shards(f"{shards}/shard-{{000000..000005}}.tar")
    assert by_pattern == by_folder
    assert find_shards(f"{shards}/shard-00000[0-2].tar").total == 24  # counts from shards.json beside them
    with pytest.raises(UserError, match="set data.samples_per_shard"):
        find_shards("https://example.org/shard-{0000..0003}.tar")
    assert find_shards("https://example.org/shard-{0000..0003}.tar", samples_per_shard=5).total == 20
    with pytest.raises(MissingInputError, match="no shards match"):
        find_shards(f"{shards}/nothing-*.tar")
    with pytest.raises(MissingInputError, match="shard-000006.tar not found"):
        find_shards(f"{shards}/shard-{{000000..000006}}.tar")
    with pytest.raises(MissingInputError, match="has no shards.json"):
        find_shards(shards.parent)


def test_an_epoch_reads_each_sample_once_across_ranks_and_workers(shards):
    world, workers = 2, 2
    seen = [keys(stream(shards, rank=r, world_size=world, num_workers=workers)) for r in range(world)]
    assert all(len(k) == len(stream(shards, rank=0, world_size=world, num_workers=workers)) == 24 for k in seen)
    assert sorted(seen[0] + seen[1]) == [f"{i:09d}" for i in range(48)]
    first = stream(shards, rank=0, world_size=world, num_workers=workers)
    first.set_epoch(1)
    assert keys(first) != seen[0] and len(keys(first)) == 24  # another order in another epoch


def test_only_a_tail_short_of_a_batch_per_stream_is_left_out(shards):
    s = stream(shards, batch_size=5, num_workers=2)  # 2 streams of 24 samples: 20 each in whole batches
    got = keys(s)
    assert len(got) == len(s) == 40 and len(set(got)) == 40


def test_a_resumed_epoch_reads_what_an_uninterrupted_one_would(shards):
    whole = stream(shards, num_workers=2)
    whole.set_epoch(3)
    batches = [batch["key"] for batch in whole.loader()]
    resumed = stream(shards, num_workers=2)
    resumed.set_epoch(3)
    resumed.resume(3, 5)
    assert [batch["key"] for batch in resumed.loader()] == batches[5:]
    resumed.set_epoch(4)  # the skip belongs to the epoch it was made in
    assert len(keys(resumed)) == 48


def test_a_shard_shorter_than_its_index_says_stops_with_one_line(shards, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(shards, copy)
    index = json.loads((copy / SHARD_INDEX).read_text())
    index["shards"][0]["count"] = 9
    (copy / SHARD_INDEX).write_text(json.dumps(index))
    with pytest.raises(InvalidInputError, match="holds 8 samples where 9 were expected"):
        list(ShardStream(find_shards(copy), eval_transform(16)))
    with pytest.raises(InvalidInputError, match="holds 8 images where 9 were expected"):
        ShardFiles(find_shards(copy), eval_transform(16))


def test_the_shuffle_buffer_keeps_every_item_and_is_seeded():
    import random

    a = list(buffered_shuffle(iter(range(50)), 7, random.Random(1)))
    assert sorted(a) == list(range(50)) and a != list(range(50))
    assert a == list(buffered_shuffle(iter(range(50)), 7, random.Random(1)))


def _read_as_rank(rank: int, world: int, init_file: str, shards: str, out: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        s = ShardStream(find_shards(shards), eval_transform(16), batch_size=4, num_workers=1)  # rank from gloo
        mine = [key for batch in s.loader() for key in batch["key"]]
        gathered: list = [None] * world
        torch.distributed.all_gather_object(gathered, mine)
        if rank == 0:
            Path(out).write_text(json.dumps(gathered))
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_two_processes_share_an_epoch_exactly(shards, tmp_path):
    out = tmp_path / "keys.json"
    torch.multiprocessing.spawn(_read_as_rank, args=(2, str(tmp_path / "init"), str(shards), str(out)), nprocs=2,
                                join=True)
    first, second = json.loads(out.read_text())
    assert len(first) == len(second) == 24 and not set(first) & set(second)
    assert sorted(first + second) == [f"{i:09d}" for i in range(48)]


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_training_on_shards_resumes_exactly(tmp_path):
    """Stopped mid-epoch by SIGTERM and resumed, a run on shards (2 workers, across an epoch's end) ends
    with the weights of an uninterrupted one."""
    from tests.train_helpers import assert_interrupted_run_resumes_exactly, tiny_stage1_config

    for split, count in (("train", 40), ("val", 8)):
        write_shards(SyntheticShapes(count, 32, seed=1, split=split), tmp_path / "shards" / split,
                     samples_per_shard=6, progress=False)
    steps = 14  # 40 samples in 2 worker streams of 4-sample batches: 10 batches an epoch
    path = tiny_stage1_config(tmp_path, data={"dataset": "shards", "root": str(tmp_path / "shards"),
                                              "num_workers": 2, "shuffle_buffer": 5},
                              trainer={"max_steps": steps, "val_check_interval": 7})
    assert_interrupted_run_resumes_exactly(path, tmp_path, steps)


@pytest.mark.slow
def test_tokenize_and_eval_read_shards(tmp_path, capsys):
    """`mvq tokenize` and `mvq eval recon` on a shards config: every sample once, in the written order."""
    from mvq.cli import main
    from mvq.data.token_store import TokenStore
    from mvq.models.mqvae import MQVAE
    from tests.test_token_store import TINY_VAE

    for split, count in (("train", 10), ("val", 6)):
        write_shards(SyntheticShapes(count, 32, seed=2, split=split), tmp_path / "shards" / split,
                     samples_per_shard=4, progress=False)
    config = tmp_path / "data.yaml"
    config.write_text(f"data:\n  dataset: shards\n  root: {tmp_path / 'shards'}\n  resolution: 32\n")
    torch.manual_seed(0)
    vae = MQVAE.from_config(TINY_VAE).eval()
    vae.save_pretrained(tmp_path / "vae")
    common = ["--vae", str(tmp_path / "vae"), "--data", str(config), "--num-workers", "0", "--device", "cpu"]
    with pytest.raises(SystemExit) as done:
        main(["tokenize", *common, "--out", str(tmp_path / "tokens"), "--batch-size", "3"])
    assert done.value.code == 0, capsys.readouterr().err
    store = TokenStore(tmp_path / "tokens")
    dataset = SyntheticShapes(10, 32, seed=2, split="train")
    assert len(store) == 10 and [store[i]["label"] for i in range(10)] == [dataset[i]["label"] for i in range(10)]
    image = ShardFiles(find_shards(tmp_path / "shards" / "train"), eval_transform(32))[7]["image"]
    assert torch.equal(store[7]["codes"], vae.tokenize(image[None])[0][0])
    with pytest.raises(SystemExit) as done:
        main(["eval", "recon", *common, "--no-fid", "--no-lpips", "--out", str(tmp_path / "recon.json"),
              "--no-progress"])
    assert done.value.code == 0, capsys.readouterr().err
    assert json.loads((tmp_path / "recon.json").read_text())["metrics"]["num_images"] == 6
