import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from mvq.config import ConfigError, dataclass_to_dict
from mvq.data.token_store import TokenPartWriter, TokenStoreHeader, create_store, store_dtypes
from mvq.errors import UserError
from mvq.models.pretrained import weights_fingerprint
from mvq.models.mqvae import MQVAE, MQVAEConfig
from mvq.models.stackformer import Stackformer
from mvq.training.run import export, train
from tests.conftest import TINY_MQVAE

REPO = Path(__file__).resolve().parents[1]
NUM_CLASSES = 3


def write_store(path: Path, vae: MQVAE, rows: int = 64, codebook_size: int | None = None, seed: int = 0) -> Path:
    """A token store with learnable structure: codes follow (label, step), positions a label's half of the grid."""
    c = vae.config
    k, n = c.num_tokens, c.num_cells
    codebook_size = codebook_size or c.codebook_size
    rng = np.random.default_rng(seed)
    labels = np.arange(rows) % NUM_CLASSES
    codes = (labels[:, None] * 4 + np.arange(k)[None] % 4) % codebook_size
    positions = np.stack([np.sort(rng.choice(np.arange(label % 2, n, 2), k, replace=False)) for label in labels])
    header = TokenStoreHeader(codebook_size=codebook_size, grid_size=c.grid_size, num_tokens=k,
                              num_classes=NUM_CLASSES, part_sizes=(rows,),
                              dtypes=store_dtypes(codebook_size, n, NUM_CLASSES),
                              vae={"weights_sha256": weights_fingerprint(vae)})
    create_store(path, header)
    TokenPartWriter(path, header, 0).append(codes, positions, labels)
    return path


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A tiny random MQ-VAE folder and a token store of 64 rows made for it."""
    root = tmp_path_factory.mktemp("stage2")
    torch.manual_seed(0)
    vae = MQVAE(MQVAEConfig.from_mapping(TINY_MQVAE))
    vae.save_pretrained(root / "vae")
    write_store(root / "tokens", vae)
    return root


def stage2_config(tmp_path: Path, assets: Path, **sections) -> Path:
    config = {
        "stage": 2,
        "vae": str(assets / "vae"),
        "model": {"code_layers": 1, "position_layers": 1, "dim": 32, "heads": 2, "dropout": 0.1,
                  "class_dropout": 0.1},
        "data": {"tokens": str(assets / "tokens"), "val_fraction": 0.125, "batch_size": 8, "num_workers": 0},
        "optim": {"lr": 3e-3, "warmup_steps": 2, "grad_clip": 1.0},
        "trainer": {"max_steps": 30, "val_check_interval": 10, "check_val_every_n_epoch": None,
                    "num_sanity_val_steps": 0, "log_every_n_steps": 1, "enable_model_summary": False},
        "run": {"image_every_n_steps": 15, "num_log_images": 4, "checkpoint_every_n_steps": 5},
    }
    for name, values in sections.items():
        config[name] = {**config.get(name, {}), **values} if isinstance(values, dict) else values
    path = tmp_path / "stage2.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def scalars(run_dir: Path) -> dict[str, list[float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "logs")).Reload()
    return {tag: [e.value for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, assets):
    """A 30-step run (validation every 10 steps, grids every 15) and its exported folder."""
    root = tmp_path_factory.mktemp("trained")
    run_dir = train(str(stage2_config(root, assets)), [], run_dir=str(root / "run"))
    return run_dir, export(run_dir, root / "export")


def last_checkpoint(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


def test_run_writes_checkpoints_and_sample_grids(trained):
    run_dir, _ = trained
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert (run_dir / "checkpoints" / "best.ckpt").is_file()
    grids = sorted((run_dir / "images").glob("step_*.png"))
    assert [p.name for p in grids] == ["step_0000015.png", "step_0000030.png"]
    from PIL import Image

    # A row of decoded validation tokens, then one row per class; 4 images of 32 px per row.
    width, height = Image.open(grids[0]).size
    assert (width, height) == (4 * 34 + 2, (1 + NUM_CLASSES) * 34 + 2)


def test_run_logs_losses_and_throughput(trained):
    logged = scalars(trained[0])
    for tag in ["train/loss", "train/code_loss", "train/position_loss", "train/lr", "train/tokens_per_s",
                "val/loss", "val/code_loss", "val/position_loss"]:
        assert tag in logged, tag
    assert len(logged["val/loss"]) == 3
    assert logged["val/loss"][-1] == pytest.approx(logged["val/code_loss"][-1] + logged["val/position_loss"][-1],
                                                   rel=1e-4)


def test_loss_goes_down(trained):
    logged = scalars(trained[0])
    initial = logged["train/loss"][0]
    assert initial > math.log(64) + math.log(65) - 0.5  # an untrained model is near uniform over both streams
    assert logged["val/loss"][-1] < initial - 2.0
    assert logged["val/loss"][-1] < logged["val/loss"][0]


def test_checkpoint_holds_the_run_state_without_the_vae(trained):
    ckpt = last_checkpoint(trained[0])
    assert ckpt["global_step"] == 30 and ckpt["mvq_state"]["batches_trained"] == 30
    assert not any(k.startswith("vae") for k in ckpt["state_dict"])  # the MQ-VAE is not part of the run state
    # AdamW: decay on linear weights only.
    groups = ckpt["optimizer_states"][0]["param_groups"]
    assert [g["weight_decay"] for g in groups] == [0.01, 0.0] and groups[0]["betas"] == (0.9, 0.95)


def test_export_holds_the_trained_stackformer(trained):
    run_dir, exported = trained
    ckpt = last_checkpoint(run_dir)
    model = Stackformer.from_pretrained(exported)
    assert (model.config.codebook_size, model.config.grid_size, model.config.num_tokens) == (64, 8, 16)
    assert model.config.num_classes == NUM_CLASSES
    for key, value in model.state_dict().items():
        assert torch.equal(value, ckpt["state_dict"]["model." + key]), key
    codes, positions = model.generate(2, labels=[0, 2], generator=torch.Generator().manual_seed(0))
    assert codes.shape == positions.shape == (2, 16)


def test_run_and_export_record_the_tokenizer_fingerprint(trained, assets):
    from mvq.data.token_store import read_header
    from mvq.models.pretrained import read_tokenizer_record

    run_dir, exported = trained
    fingerprint = weights_fingerprint(MQVAE.from_pretrained(assets / "vae"))
    assert read_header(assets / "tokens").vae["weights_sha256"] == fingerprint
    assert last_checkpoint(run_dir)["mvq_state"]["tokenizer"]["tokenizer_fingerprint"] == fingerprint
    record = read_tokenizer_record(exported)
    assert record["tokenizer_fingerprint"] == fingerprint
    assert record["tokenizer_config"] == dataclass_to_dict(MQVAE.from_pretrained(assets / "vae").config)
    assert read_tokenizer_record(assets / "vae") is None


def test_tokenizer_records_under_the_earlier_keys_still_load_and_export(tmp_path):
    import json

    from mvq.models.pretrained import read_tokenizer_record, write_tokenizer_record

    earlier = {"mqvae_fingerprint": "ab" * 32, "mqvae_config": {"keep_ratio": 0.5}}
    (tmp_path / "tokenizer.json").write_text(json.dumps(earlier))  # a folder exported before the renaming
    expected = {"tokenizer_fingerprint": "ab" * 32, "tokenizer_config": {"keep_ratio": 0.5}}
    assert read_tokenizer_record(tmp_path) == expected
    write_tokenizer_record(tmp_path / "new", earlier)  # an earlier run's checkpoint record, exported now
    assert json.loads((tmp_path / "new" / "tokenizer.json").read_text()) == expected
    (tmp_path / "tokenizer.json").write_text(json.dumps({"tokenizer_config": {}}))
    with pytest.raises(UserError, match="does not record a tokenizer fingerprint"):
        read_tokenizer_record(tmp_path)


def test_saved_config_holds_absolute_paths_and_export_takes_overrides(tmp_path, trained, assets, monkeypatch):
    from mvq.training.config import load_training_config

    monkeypatch.chdir(assets)
    raw, _ = load_training_config(stage2_config(tmp_path, assets), ["vae=vae", "data.tokens=tokens"])
    assert raw["vae"] == str(assets / "vae") and raw["data"]["tokens"] == str(assets / "tokens")
    # The saved config records the complete model (geometry, classes), so a run whose MQ-VAE folder and
    # token stores have moved still exports: export opens neither.
    run_dir = Path(shutil.copytree(trained[0], tmp_path / "run"))
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["vae"] == str(assets / "vae")
    assert {k: saved["model"][k] for k in ("codebook_size", "grid_size", "num_tokens", "num_classes")} == {
        "codebook_size": 64, "grid_size": 8, "num_tokens": 16, "num_classes": NUM_CLASSES}
    gone = {"vae": str(tmp_path / "gone"), "data": {**saved["data"], "tokens": str(tmp_path / "gone_tokens")}}
    (run_dir / "config.yaml").write_text(yaml.safe_dump({**saved, **gone}))
    exported = Stackformer.from_pretrained(export(run_dir, tmp_path / "out"))
    assert exported.config == Stackformer.from_pretrained(trained[1]).config
    # A config saved by an older mvq (no geometry recorded) is resolved from the files, which must exist.
    old = {**saved, **gone, "model": {k: v for k, v in saved["model"].items()
                                      if k not in ("codebook_size", "grid_size", "num_tokens")}}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(old))
    with pytest.raises(ConfigError, match="not found"):
        export(run_dir, tmp_path / "out2")
    moved = Path(shutil.copytree(assets / "vae", tmp_path / "moved_vae"))
    Stackformer.from_pretrained(export(run_dir, tmp_path / "out2",
                                       overrides=[f"vae={moved}", f"data.tokens={assets / 'tokens'}"]))


@pytest.mark.slow
def test_resume_reaches_planned_step_exactly(tmp_path, assets, monkeypatch):
    from mvq.training.checkpoints import AtomicCheckpointIO

    saved_at_4 = tmp_path / "step4.ckpt"
    original = AtomicCheckpointIO.save_checkpoint

    def keep_step_4(self, checkpoint, path, storage_options=None):
        original(self, checkpoint, path, storage_options)
        if Path(path).name == "last.ckpt" and checkpoint["global_step"] == 4:
            shutil.copy(path, saved_at_4)

    monkeypatch.setattr(AtomicCheckpointIO, "save_checkpoint", keep_step_4)
    # 7 batches per epoch: the run crosses an epoch boundary after the resume point.
    path = stage2_config(tmp_path, assets, trainer={"max_steps": 10, "val_check_interval": 4},
                         run={"checkpoint_every_n_steps": 2, "image_every_n_steps": 0})
    straight = train(str(path), [], run_dir=str(tmp_path / "straight"))
    assert saved_at_4.is_file()

    interrupted = tmp_path / "interrupted"
    (interrupted / "checkpoints").mkdir(parents=True)
    shutil.copy(straight / "config.yaml", interrupted / "config.yaml")
    shutil.copy(saved_at_4, interrupted / "checkpoints" / "last.ckpt")
    train(None, [], resume=str(interrupted))

    a = torch.load(straight / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    b = torch.load(interrupted / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert b["global_step"] == 10 and b["mvq_state"]["batches_trained"] == 10
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    adam_a, adam_b = a["optimizer_states"][0]["state"], b["optimizer_states"][0]["state"]
    assert {float(s["step"]) for s in adam_b.values()} == {10.0}
    for index in adam_a:
        assert torch.equal(adam_a[index]["exp_avg"], adam_b[index]["exp_avg"])


@pytest.mark.slow
def test_accumulation_steps_once_per_group(tmp_path, assets):
    path = stage2_config(tmp_path, assets, optim={"accumulate_grad_batches": 2},
                         trainer={"max_steps": 3, "val_check_interval": 6},
                         run={"image_every_n_steps": 0})
    run_dir = train(str(path), [], run_dir=str(tmp_path / "run"))
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 3 and ckpt["mvq_state"]["batches_trained"] == 6
    assert {float(s["step"]) for s in ckpt["optimizer_states"][0]["state"].values()} == {3.0}


def test_config_errors_fail_before_work(tmp_path, assets):
    run = str(tmp_path / "run")
    with pytest.raises(ConfigError, match="code_layer.*Did you mean 'code_layers'"):
        train(str(stage2_config(tmp_path, assets, model={"code_layer": 2})), [], run_dir=run)
    with pytest.raises(ConfigError, match="token.*Did you mean 'tokens'"):
        train(str(stage2_config(tmp_path, assets)), ["data.token=x"], run_dir=run)
    # Geometry comes from the MQ-VAE; repeating it wrongly names both values.
    with pytest.raises(ConfigError, match=r"model.codebook_size is 32.*MQ-VAE.*codebook_size 64"):
        train(str(stage2_config(tmp_path, assets, model={"codebook_size": 32})), [], run_dir=run)
    # ...and repeating it rightly is fine; the reference's key names are one error naming mvq's.
    from mvq.training.config import load_training_config

    _, parsed = load_training_config(stage2_config(tmp_path, assets, model={"codebook_size": 64, "dim": 64}))
    assert parsed.model.codebook_size == 64 and parsed.model.dim == 64
    with pytest.raises(ConfigError, match=r"model.n_embd → model.dim: .*mvq convert-config"):
        load_training_config(stage2_config(tmp_path, assets, model={"n_embd": 64}))
    assert parsed.model.num_classes == NUM_CLASSES  # from the store's header
    with pytest.raises(ConfigError, match="num_classes is 10.*3 classes"):
        train(str(stage2_config(tmp_path, assets, model={"num_classes": 10})), [], run_dir=run)
    # A store written for another codebook cannot be decoded by this MQ-VAE.
    write_store(tmp_path / "other", MQVAE.from_pretrained(assets / "vae"), codebook_size=32)
    with pytest.raises(ConfigError, match=r"data.tokens=.*codebook_size: store 32, MQ-VAE 64"):
        train(str(stage2_config(tmp_path, assets)), [f"data.tokens={tmp_path / 'other'}"], run_dir=run)
    with pytest.raises(ConfigError, match="vae=PATH"):
        train(str(stage2_config(tmp_path, assets, vae=None)), [], run_dir=run)
    with pytest.raises(ConfigError, match="data.tokens=STORE"):
        train(str(stage2_config(tmp_path, assets)), ["data.tokens=null"], run_dir=run)
    with pytest.raises(ConfigError, match="not found"):
        train(str(stage2_config(tmp_path, assets)), [f"vae={tmp_path / 'nowhere'}"], run_dir=run)
    assert not (tmp_path / "run").exists()


def test_store_of_other_vae_weights_stops_before_first_step(tmp_path, assets):
    torch.manual_seed(1)
    other = MQVAE(MQVAEConfig.from_mapping(TINY_MQVAE))  # same geometry, other weights
    write_store(tmp_path / "tokens", other)
    with pytest.raises(ValueError, match="other weights"):
        train(str(stage2_config(tmp_path, assets)), [f"data.tokens={tmp_path / 'tokens'}"],
              run_dir=str(tmp_path / "run"))
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.slow
def test_shipped_configs_ask_for_their_vae(tmp_path):
    for name in ["stage2/stackformer_imagenet_v12p12_class", "stage2/stackformer_imagenet_v12p12_uncond",
                 "stage2/stackformer_ffhq_uncond", "demo/stackformer_shapes"]:
        with pytest.raises(ConfigError, match="vae=PATH"):
            train(str(REPO / "configs" / f"{name}.yaml"), [], run_dir=str(tmp_path / "run"))
    # The reference's command line, as written in its README (on the CPU: `--gpus -1` needs a GPU).
    result = subprocess.run([sys.executable, str(REPO / "train.py"), "--gpus", "0", "--base",
                             "configs/stage2/stackformer_imagenet_v12p12_class.yml", "--max_epochs", "50"],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 1 and "vae=PATH" in result.stderr and "Traceback" not in result.stderr


def test_shipped_configs_build_paper_size_models(tmp_path, assets):
    from mvq.training.config import load_training_config

    overrides = [f"vae={assets / 'vae'}", f"data.tokens={assets / 'tokens'}"]
    _, parsed = load_training_config(REPO / "configs/stage2/stackformer_imagenet_v12p12_uncond.yaml", overrides)
    m = parsed.model
    assert (m.code_layers, m.position_layers, m.dim, m.heads, m.num_classes) == (12, 12, 1024, 16, 0)
    assert (parsed.optim.lr, parsed.optim.weight_decay, tuple(parsed.optim.betas)) == (5e-4, 0.01, (0.9, 0.95))
    with pytest.raises(ConfigError, match="num_classes is 1000"):  # the tiny store has 3 classes
        load_training_config(REPO / "configs/stage2/stackformer_imagenet_v12p12_class.yaml", overrides)
    _, demo = load_training_config(REPO / "configs/demo/stackformer_shapes.yaml", overrides)
    assert demo.model.num_classes == NUM_CLASSES and demo.model.class_dropout > 0


def test_validation_rows_are_held_out_or_read_from_their_store(tmp_path, assets):
    from mvq.training.config import load_training_config
    from mvq.training.stage2 import TokenDataModule, held_out_rows

    train_rows, val_rows = held_out_rows(40, 0.25, group=2)  # flipped stores: image 2i and its mirror 2i + 1
    assert len(val_rows) == 10 and set(train_rows.tolist()).isdisjoint(val_rows.tolist())
    assert sorted(train_rows.tolist() + val_rows.tolist()) == list(range(40))
    held_out = set(val_rows.tolist())
    assert all(row ^ 1 in held_out for row in held_out)  # pairs are never split
    assert torch.equal(held_out_rows(40, 0.25, group=2)[1], val_rows)  # the same rows every run

    _, parsed = load_training_config(stage2_config(tmp_path, assets), [f"data.val_tokens={assets / 'tokens'}"])
    data = TokenDataModule(parsed.data)
    data.setup("fit")
    assert len(data.train_dataset) == len(data.val_dataset) == 64
    with pytest.raises(ConfigError, match="data.val_tokens=.*not found"):
        load_training_config(stage2_config(tmp_path, assets), [f"data.val_tokens={tmp_path / 'missing'}"])
