"""The stage-2 config: a Stackformer trained on a token store made by a pretrained MQ-VAE (or VQGAN).

A stage-2 config names the tokenizer folder (`vae:`, an MQ-VAE or a VQGAN) and the token store (`data.tokens`); the
codebook size, grid and K come from the MQ-VAE, so the `model:` section only holds the
Stackformer's own architecture. A run resolves it once, before any work: the MQ-VAE folder, the
store (complete, and made by an MQ-VAE of this geometry), and any geometry a config repeats anyway
are checked, and the run's saved config records the complete model section. Reading that record
back (`resolve=False`: `mvq export`) opens no file, so a run exports after its stores have moved.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from mvq.config import ConfigError, build_dataclass
from mvq.convert.config import refuse_reference_names
from mvq.data.token_store import TokenStore, TokenStoreHeader, check_compatible, vae_token_geometry
from mvq.errors import UserError
from mvq.models.mqvae import MQVAEConfig
from mvq.models.stackformer import StackformerConfig
from mvq.models.tokenizer import read_tokenizer_config
from mvq.models.vqgan import VQGANConfig
from mvq.training.sections import OptimConfig, RunConfig, check_sections, common_sections

SECTIONS = ("stage", "model", "data", "vae", "optim", "trainer", "run")

# Config keys that hold paths: stored absolute, so a run's config.yaml works from any folder.
PATH_KEYS = (("vae",), ("data", "tokens"), ("data", "val_tokens"), ("run", "init_from"))


@dataclass
class Stage2OptimConfig(OptimConfig):
    """The reference release's stage-2 optimisation (configs/stage2/*.yml there): AdamW, fixed lr
    5e-4 (not scaled by batch size), weight decay 0.01 on linear weights, betas (0.9, 0.95), no
    warm-up, cosine decay to 0. A config only lists what it changes; giving `base_lr` asks for a
    scaled lr instead of the fixed one.
    """

    lr: float | None = 5.0e-4
    betas: tuple[float, ...] = (0.9, 0.95)
    weight_decay: float = 0.01

TOKENIZE_HINT = "make one with `mvq tokenize --vae VAE_DIR --data DATA --out STORE`"


@dataclass
class TokenDataConfig:
    """`data:` of a stage-2 config: token stores and batching (the image encoder never runs here).

    Without `val_tokens`, a deterministic `val_fraction` of `tokens` is held out for validation
    (whole images: an image and its flipped copy stay on the same side).
    """

    tokens: str | None = None
    val_tokens: str | None = None
    val_fraction: float = 0.01
    batch_size: int = 4
    num_workers: int = 4

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"data.batch_size must be at least 1, got {self.batch_size}")
        if self.num_workers < 0:
            raise ConfigError(f"data.num_workers must be 0 or more, got {self.num_workers}")
        if self.val_tokens is None and not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction must be in (0, 1) when data.val_tokens is not set "
                              f"(validation picks the best checkpoint), got {self.val_fraction}")


@dataclass
class Stage2Config:
    """A validated stage-2 config: the Stackformer (its geometry taken from the tokenizer in `vae`) and its training.

    `parse_stage2` builds it, after checking the tokenizer folder and the token stores against each other
    (or from a run's complete record of it).
    """

    model: StackformerConfig
    data: TokenDataConfig
    vae: str
    optim: OptimConfig = field(default_factory=Stage2OptimConfig)
    trainer: dict[str, Any] = field(default_factory=dict)
    run: RunConfig = field(default_factory=RunConfig)


def read_vae_config(path: str | Path) -> MQVAEConfig | VQGANConfig:
    """The config of the tokenizer folder that `vae:` names (weights not loaded); errors name the key."""
    try:
        return read_tokenizer_config(path)
    except UserError as exc:
        raise ConfigError(f"vae: {exc}. It must be a pretrained MQ-VAE or VQGAN folder, e.g. written by "
                          f"`mvq export STAGE1_RUN_DIR OUT_DIR`") from exc


def _open_store(path: str, key: str, vae_config: MQVAEConfig | VQGANConfig, order: str | None = None):
    """A complete token store whose tokens the MQ-VAE can decode (in `order`, when given); errors name the key."""
    try:
        store = TokenStore(path)
        check_compatible(store.header, vae_config, any_budget=True)
        if order is not None and store.header.order != order:
            raise ValueError(f"its tokens are in {store.header.order} order, those of data.tokens in {order} order")
    except (FileNotFoundError, ValueError) as exc:
        raise ConfigError(f"{key}={path}: {exc}") from exc
    return store


def _model_section(raw_model: Any, vae_config: MQVAEConfig | VQGANConfig, store: TokenStoreHeader
                   ) -> StackformerConfig:
    """Validate `model:` and complete it with the MQ-VAE's geometry, the store's budget (tokens per image, or a
    number per image), order and classes (and their names)."""
    store_classes, store_class_names = store.num_classes or 0, store.source.get("class_names")
    store_order = store.order
    if raw_model is not None and not isinstance(raw_model, dict):
        raise ConfigError(f"model: must be a mapping of Stackformer settings, got {raw_model!r}")
    refuse_reference_names(raw_model, 2)
    section = dict(raw_model or {})
    valid = {f.name for f in fields(StackformerConfig)}
    unknown = [key for key in section if key not in valid]
    if unknown:  # fails naming the key, the closest valid one and the list of valid ones
        build_dataclass(StackformerConfig, {unknown[0]: section[unknown[0]]}, "model")
    geometry = {**vae_token_geometry(vae_config), "num_tokens": store.num_tokens,
                "variable_length": store.variable_length}
    for key in geometry:
        given = section.get(key)
        if given is not None and given != geometry[key]:
            raise ConfigError(f"model.{key} is {given}, but the MQ-VAE (vae:) and its token store have {key} "
                              f"{geometry[key]}. Stage 2 reads {', '.join(geometry)} from them: remove "
                              f"model.{key} from the config or use the MQ-VAE and store it was meant for")
    section.update(geometry)
    given_order = section.get("token_order")
    if given_order is not None and given_order != store_order:
        raise ConfigError(f"model.token_order is {given_order}, but the token store (data.tokens) lists its tokens in "
                          f"{store_order} order: remove model.token_order (it is read from the store)")
    section["token_order"] = store_order
    num_classes = section.get("num_classes")
    if num_classes is None:  # not set: as many as the token store's labels have
        section["num_classes"] = store_classes
    elif isinstance(num_classes, int) and num_classes > 0 and num_classes != store_classes:
        have = f"labels of {store_classes} classes" if store_classes else "no class labels"
        raise ConfigError(f"model.num_classes is {num_classes}, but the token store (data.tokens) has {have}. "
                          f"Set model.num_classes to {store_classes} (or leave it out), or 0 for an "
                          f"unconditional model")
    names = store_class_names
    if ("class_names" not in section and isinstance(names, list) and section.get("num_classes") == store_classes
            and len(names) == store_classes):  # a conditional model learns the store's classes: keep their names
        section["class_names"] = list(names)
    return build_dataclass(StackformerConfig, section, "model")


def recorded_model(raw_model: Any) -> StackformerConfig:
    """The Stackformer config a run recorded (geometry and classes included), read without any file."""
    section = dict(raw_model) if isinstance(raw_model, dict) else {}
    missing = [key for key in ("codebook_size", "grid_size", "num_tokens", "num_classes") if key not in section]
    if missing:
        raise ConfigError(f"model: does not record {', '.join(missing)} (a config saved by an older mvq): "
                          "resolve it from vae: and data.tokens instead")
    return build_dataclass(StackformerConfig, section, "model")


def parse_stage2(raw: dict, resolve: bool = True) -> Stage2Config:
    """Validate a stage-2 config mapping into a Stage2Config with a complete StackformerConfig.

    With `resolve` the model's geometry and classes come from the tokenizer folder and the token
    store, which are checked; without, from the complete `model:` section a run recorded (no file read).
    """
    check_sections(raw, SECTIONS, 2)
    run, trainer = common_sections(raw)
    if run.val_keep:
        raise ConfigError("run.val_keep is for stage 1 (an MQ-VAE's token budgets); remove it from this stage-2 config")
    vae = raw.get("vae")
    if vae in (None, ""):
        raise ConfigError("vae: is not set. Stage 2 trains on the tokens of a pretrained MQ-VAE: add "
                          "vae=PATH (the MQ-VAE folder written by `mvq export`) and data.tokens=STORE (its "
                          f"token store; {TOKENIZE_HINT}) to the command line: "
                          "`mvq train CONFIG vae=PATH data.tokens=STORE`, or the same key=value pairs after "
                          "`python train.py --base CONFIG ...`")
    if not isinstance(vae, str):
        raise ConfigError(f"vae: must be the path of a pretrained MQ-VAE folder, got {vae!r}")
    data = build_dataclass(TokenDataConfig, raw.get("data"), "data")
    if data.tokens is None:
        raise ConfigError(f"data.tokens is not set: give the token store to train on with data.tokens=STORE "
                          f"({TOKENIZE_HINT})")
    if resolve:
        vae_config = read_vae_config(vae)
        store = _open_store(data.tokens, "data.tokens", vae_config)
        if data.val_tokens is not None:
            val = _open_store(data.val_tokens, "data.val_tokens", vae_config, store.header.order)
            if (val.header.num_tokens, val.header.variable_length) != (store.header.num_tokens,
                                                                       store.header.variable_length):
                raise ConfigError(f"data.val_tokens={data.val_tokens} holds other budgets than data.tokens: "
                                  "tokenize both with the same --keep / --quality-target")
        model = _model_section(raw.get("model"), vae_config, store.header)
    else:
        model = recorded_model(raw.get("model"))

    optim_section = dict(raw.get("optim") or {})
    if "base_lr" in optim_section:  # a scaled lr was asked for: do not fix lr
        optim_section.setdefault("lr", None)
    optim = build_dataclass(Stage2OptimConfig, optim_section, "optim")
    return Stage2Config(model=model, data=data, vae=vae, optim=optim, trainer=trainer, run=run)
