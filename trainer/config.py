"""Configs: YAML files in `configs/` are the single source of hyper-parameters.

A config is a nested dataclass; loading checks every key and value, so a typo or a bad value
fails at start-up with the file, the key and what would be valid, not hours into a run.
`--set section.key=value` on the command line overrides single values (parsed as YAML).
Malformed YAML, a key given twice, or a `--set` below a plain value is a ConfigError naming the
file or the option, never a traceback.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from collections.abc import Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

import yaml


class ConfigError(ValueError):
    """A config key or value is wrong; the message says which and why."""


@dataclass
class DataConfig:
    shards: str = "runs/demo/shards"  # folder written by `python -m data_tools shard`
    batch_size: int = 16  # per process, per micro-step
    num_workers: int = 0  # DataLoader workers per process
    shuffle_buffer: int = 256
    eval_split: str = "validate"  # split used for validation during training
    in_memory: str = "auto"  # decode the train split once into memory: "always", "never" (stream the
    # shards) or "auto" (when it fits memory_budget_mb; OASIS train: 500 MiB)
    memory_budget_mb: int = 4096
    in_memory_on: str = "device"  # "device": on the training device (no copy per step); "host": CPU RAM

    def check(self) -> None:
        require(self.batch_size >= 1, "data.batch_size", "must be >= 1")
        require(self.in_memory in ("auto", "always", "never"), "data.in_memory", "must be auto, always or never")
        require(self.memory_budget_mb >= 0, "data.memory_budget_mb", "must be >= 0")
        require(self.in_memory_on in ("device", "host"), "data.in_memory_on", "must be device or host")
        require(self.num_workers >= 0, "data.num_workers", "must be >= 0")
        require(self.eval_split in ("train", "validate", "test"), "data.eval_split", "must be train, validate or test")


@dataclass
class ModelConfig:
    downsample: int = 4  # 4: 256x256 -> 64x64 code grid; 8: -> 32x32
    channels: int = 64  # width after the last downsampling conv
    res_blocks: int = 2
    res_channels: int = 32
    code_dim: int = 64  # D, the size of the encoder's output and the decoder's input per cell

    def check(self) -> None:
        require(self.downsample in (2, 4, 8, 16), "model.downsample", "must be 2, 4, 8 or 16")
        require(
            self.channels >= 2 and self.res_channels >= 1 and self.code_dim >= 1,
            "model",
            "channels must be >= 2, res_channels and code_dim >= 1",
        )
        require(self.res_blocks >= 0, "model.res_blocks", "must be >= 0")


@dataclass
class QuantizerConfig:
    kind: str = (
        "vq"  # "vq": a learned codebook (trainer/quantizer.py); "fsq": finite scalar quantisation (trainer/fsq.py)
    )
    num_codes: int = 512  # K; for fsq it must equal the product of `levels`
    beta: float = 0.25  # commitment weight (vq)
    update: str = "ema"  # "ema" (moving averages + dead-code restarts) or "loss" (paper's codebook loss) (vq)
    decay: float = 0.99  # (vq, ema)
    dead_code_threshold: float = 1.0  # (vq, ema)
    compile: bool = True  # torch.compile the nearest-code kernel (vq)
    codebook_dim: int = 0  # (vq) codes of this size behind 1x1 projections from and to model.code_dim (0: code_dim)
    cosine: bool = False  # (vq) l2-normalised codes and inputs: nearest code by cosine similarity
    levels: list[int] = field(default_factory=lambda: [8, 8, 8])  # (fsq) values per channel; 8 x 8 x 8 = 512 codes

    def check(self) -> None:
        require(self.kind in ("vq", "fsq"), "quantizer.kind", "must be 'vq' or 'fsq'")
        require(self.num_codes >= 2, "quantizer.num_codes", "must be >= 2")
        require(self.codebook_dim >= 0, "quantizer.codebook_dim", "must be >= 0 (0: model.code_dim)")
        if self.kind == "fsq":
            require(
                len(self.levels) >= 1 and all(level >= 2 for level in self.levels),
                "quantizer.levels",
                "must be a non-empty list of integers >= 2",
            )
            require(
                math.prod(self.levels) == self.num_codes,
                "quantizer.num_codes",
                f"must equal the product of quantizer.levels {self.levels} ({math.prod(self.levels)}) for fsq",
            )
        require(self.beta >= 0, "quantizer.beta", "must be >= 0")
        require(self.update in ("ema", "loss"), "quantizer.update", "must be 'ema' or 'loss'")
        require(0 <= self.decay < 1, "quantizer.decay", "must be in [0, 1)")
        require(self.dead_code_threshold >= 0, "quantizer.dead_code_threshold", "must be >= 0")


@dataclass
class LossConfig:
    """Stage 1's reconstruction loss: MSE + ssim_weight * (1 - SSIM) (SSIM as everywhere: Gaussian 11, sigma
    1.5, data range 1), a structure term against MSE's blur (Zhao et al., "Loss functions for image restoration")."""

    ssim_weight: float = 0.0

    def check(self) -> None:
        require(self.ssim_weight >= 0, "loss.ssim_weight", "must be >= 0")


@dataclass
class TrainConfig:
    max_steps: int = 1000  # optimizer steps
    lr: float = 3e-4
    warmup_steps: int = 100  # linear warm-up, then cosine decay to lr * min_lr_ratio
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # max gradient norm (0: off)
    grad_accum: int = 1  # micro-batches per optimizer step
    mixed_precision: str = "no"  # "no", "bf16" or "fp16"
    compile: bool = False  # torch.compile the whole model
    log_every: int = 20  # also how often NaN/Inf is checked
    eval_every: int = 250
    eval_batches: int = 8  # validation batches per evaluation during training (0: whole split)
    checkpoint_every: int = 250
    keep_checkpoints: int = 3

    def check(self) -> None:
        require(self.max_steps >= 1, "train.max_steps", "must be >= 1")
        require(self.lr > 0, "train.lr", "must be > 0")
        require(
            self.warmup_steps >= 0 and 0 <= self.min_lr_ratio <= 1, "train", "warmup_steps >= 0, min_lr_ratio in [0, 1]"
        )
        require(self.grad_clip >= 0 and self.weight_decay >= 0, "train", "grad_clip and weight_decay must be >= 0")
        require(self.grad_accum >= 1, "train.grad_accum", "must be >= 1")
        require(
            self.mixed_precision in ("no", "bf16", "fp16"), "train.mixed_precision", "must be 'no', 'bf16' or 'fp16'"
        )
        for name in ("log_every", "eval_every", "checkpoint_every", "keep_checkpoints"):
            require(getattr(self, name) >= 1, f"train.{name}", "must be >= 1")
        require(self.eval_batches >= 0, "train.eval_batches", "must be >= 0")


@dataclass
class WandbConfig:
    enabled: bool = True
    project: str = "brain-vqvae"
    mode: str = "auto"  # "auto": online if WANDB_API_KEY is set, else offline; or "online"/"offline"

    def check(self) -> None:
        require(self.mode in ("auto", "online", "offline"), "wandb.mode", "must be auto, online or offline")


@dataclass
class VQVAEConfig:
    out_dir: str = "runs/vqvae"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    quantizer: QuantizerConfig = field(default_factory=QuantizerConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)

    def check(self) -> None:
        check_sections(self)


@dataclass
class CodesConfig:
    dir: str = "runs/demo/codes"  # written by `python -m trainer encode`
    batch_size: int = 32  # per process, per micro-step
    eval_split: str = "validate"

    def check(self) -> None:
        require(self.batch_size >= 1, "codes.batch_size", "must be >= 1")
        require(self.eval_split in ("train", "validate", "test"), "codes.eval_split", "must be train, validate or test")


@dataclass
class TransformerConfig:
    """The transformer prior (trainer/transformer_prior.py): every cell attends to every earlier cell."""

    layers: int = 4
    width: int = 128
    heads: int = 4
    kv_heads: int = 1  # key/value heads shared by groups of query heads: a smaller sampling cache
    mlp_ratio: int = 4
    dropout: float = 0.1  # on the embeddings and both residual branches

    def check(self) -> None:
        for name in ("layers", "width", "heads", "kv_heads", "mlp_ratio"):
            require(getattr(self, name) >= 1, f"model.transformer.{name}", "must be >= 1")
        require(self.width % self.heads == 0, "model.transformer.heads", f"must divide width ({self.width})")
        require(self.heads % self.kv_heads == 0, "model.transformer.kv_heads", f"must divide heads ({self.heads})")
        require(0 <= self.dropout < 1, "model.transformer.dropout", "must be in [0, 1)")


PRIOR_KINDS = ("pixelcnn", "transformer")


@dataclass
class PriorModelConfig:
    """`kind` picks the prior; the gated PixelCNN's keys sit directly under `model` (as before `kind` existed,
    so older configs and checkpoints load as a PixelCNN), the transformer's under `model.transformer`."""

    kind: str = "pixelcnn"  # "pixelcnn" (trainer/pixelcnn.py) or "transformer" (trainer/transformer_prior.py)
    channels: int = 128
    layers: int = 12  # gated layers: one type A, then type B
    kernel: int = 3  # odd; the first layer uses first_kernel
    first_kernel: int = 7
    head_channels: int = 512
    condition_on_slice: bool = True  # learn p(codes | slice position); sampling can still omit it (both kinds)
    transformer: TransformerConfig = field(default_factory=TransformerConfig)

    def check(self) -> None:
        require(self.kind in PRIOR_KINDS, "model.kind", f"must be one of {', '.join(PRIOR_KINDS)}")
        require(self.channels >= 1 and self.head_channels >= 1, "model", "channels and head_channels must be >= 1")
        require(self.layers >= 1, "model.layers", "must be >= 1")
        for name in ("kernel", "first_kernel"):
            value = getattr(self, name)
            require(value >= 3 and value % 2 == 1, f"model.{name}", "must be odd and >= 3")
        self.transformer.check()


@dataclass
class PriorConfig:
    """Stage 2. The grid, K and the VQ-VAE come from the codes folder, not from here."""

    out_dir: str = "runs/prior"
    seed: int = 0
    codes: CodesConfig = field(default_factory=CodesConfig)
    model: PriorModelConfig = field(default_factory=PriorModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    sample_every: int = 0  # log a grid of generated brains every N steps (0: only at the end)
    sample_count: int = 8

    def check(self) -> None:
        check_sections(self)
        require(self.sample_every >= 0, "sample_every", "must be >= 0")
        require(self.sample_count >= 1, "sample_count", "must be >= 1")


def check_sections(config: Any) -> None:
    for f in dataclasses.fields(config):
        section = getattr(config, f.name)
        if dataclasses.is_dataclass(section):
            section.check()


def require(ok: bool, key: str, problem: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {problem}")


def build(cls: type, values: dict, where: str) -> Any:
    """Make dataclass `cls` from a dict, rejecting unknown keys and values of the wrong type."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(values).__name__}")
    hints = get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        name = f"{where}.{key}" if where else key
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; known keys: {', '.join(sorted(known))}"
            raise ConfigError(f"{name}: unknown key{hint}")
        kind = hints[key]
        if dataclasses.is_dataclass(kind):
            kwargs[key] = build(kind, value, name)
            continue
        if typing.get_origin(kind) is list:
            (item,) = typing.get_args(kind)
            if not isinstance(value, list) or not all(type(v) is item for v in value):
                raise ConfigError(f"{name}: expected a list of {item.__name__}, got {value!r}")
            kwargs[key] = value
            continue
        if kind is float and not isinstance(value, bool):
            value = as_float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ConfigError(f"{name}: expected {kind.__name__}, got {value!r}")
        kwargs[key] = value
    return cls(**kwargs)


def as_float(value: Any) -> Any:
    """Ints, and strings like '3e-4' (YAML 1.1 reads a float without a dot as a string), as floats."""
    if isinstance(value, (int, str)):
        try:
            return float(value)
        except ValueError:
            pass
    return value


class UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load, except that a key given twice is an error: YAML would silently keep the last one,
    so a pasted second `lr:` would override the first without a word."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, Hashable) and key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} appears twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, UniqueKeyLoader.construct_mapping)


def parse_yaml(text: str) -> Any:
    try:
        return yaml.load(text, Loader=UniqueKeyLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"not valid YAML{where}: {problem}") from None


def apply_overrides(values: dict, overrides: list[str]) -> dict:
    """Apply `section.key=value` strings (value parsed as YAML) to a raw config dict."""
    for item in overrides:
        path, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}: expected section.key=value")
        keys = path.strip().split(".")
        if not all(keys):
            raise ConfigError(f"--set {item!r}: empty key in {path!r}")
        node = values
        for depth, part in enumerate(keys[:-1]):
            if node.get(part) is None:  # absent, or a section left empty in the file
                node[part] = {}
            node = node[part]
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {'.'.join(keys[: depth + 1])} is a value, not a section")
        try:
            node[keys[-1]] = parse_yaml(raw)
        except ConfigError as err:
            raise ConfigError(f"--set {item!r}: value is {err}") from None
    return values


def read_config_file(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        values = parse_yaml(path.read_bytes().decode("utf-8")) or {}
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not valid UTF-8 ({err.reason} at byte {err.start})") from None
    except (ConfigError, OSError) as err:
        raise ConfigError(f"{path}: {err}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of sections and keys, got {type(values).__name__}")
    return values


def load_config(path: str | Path | None, overrides: list[str] = (), cls: type = VQVAEConfig) -> Any:
    values = read_config_file(Path(path)) if path is not None else {}
    try:
        config = build(cls, apply_overrides(values, list(overrides)), "")
        config.check()
    except ConfigError as err:
        raise ConfigError(f"{path or 'config'}: {err}") from None
    return config


def config_to_dict(config: Any) -> dict:
    return dataclasses.asdict(config)
