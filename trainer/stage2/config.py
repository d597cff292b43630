"""Stage 2's config: the prior (PixelCNN or transformer) and the code grids it trains on (configs/prior_*.yaml)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from common.limits import MAX_BATCH, MAX_LAYERS, MAX_SAMPLES, MAX_WIDTH
from trainer.run.config_file import check_sections, require, require_range
from trainer.run.train_config import TrainConfig, WandbConfig, check_seed


@dataclass
class CodesConfig:
    dir: str = "runs/demo/codes"  # written by `python -m trainer encode`
    batch_size: int = 32  # per process, per micro-step
    eval_split: str = "validate"

    def check(self) -> None:
        require_range(self.batch_size, 1, MAX_BATCH, "codes.batch_size")
        require(self.eval_split in ("train", "validate", "test"), "codes.eval_split", "must be train, validate or test")


@dataclass
class TransformerConfig:
    """The transformer prior (trainer/stage2/transformer_prior.py): every cell attends to every earlier cell."""

    layers: int = 4
    width: int = 128
    heads: int = 4
    kv_heads: int = 1  # key/value heads shared by groups of query heads: a smaller sampling cache
    mlp_ratio: int = 4
    dropout: float = 0.1  # on the embeddings and both residual branches

    def check(self) -> None:
        require_range(self.layers, 1, MAX_LAYERS, "model.transformer.layers")
        for name in ("width", "heads", "kv_heads", "mlp_ratio"):
            require_range(getattr(self, name), 1, MAX_WIDTH, f"model.transformer.{name}")
        require(self.width % self.heads == 0, "model.transformer.heads", f"must divide width ({self.width})")
        require(self.heads % self.kv_heads == 0, "model.transformer.kv_heads", f"must divide heads ({self.heads})")
        require(0 <= self.dropout < 1, "model.transformer.dropout", "must be in [0, 1)")


PRIOR_KINDS = ("pixelcnn", "transformer")
MAX_KERNEL = 2 * 128 + 1  # a window twice the largest code grid (128x128, model.downsample 2) sees nothing more


@dataclass
class PriorModelConfig:
    """`kind` picks the prior; the gated PixelCNN's keys sit directly under `model` (as before `kind` existed,
    so older configs and checkpoints load as a PixelCNN), the transformer's under `model.transformer`."""

    kind: str = "pixelcnn"  # "pixelcnn" (stage2/pixelcnn.py) or "transformer" (stage2/transformer_prior.py)
    channels: int = 128
    layers: int = 12  # gated layers: one type A, then type B
    kernel: int = 3  # odd; the first layer uses first_kernel
    first_kernel: int = 7
    head_channels: int = 512
    condition_on_slice: bool = True  # learn p(codes | slice position); sampling can still omit it (both kinds)
    transformer: TransformerConfig = field(default_factory=TransformerConfig)

    def check(self) -> None:
        require(self.kind in PRIOR_KINDS, "model.kind", f"must be one of {', '.join(PRIOR_KINDS)}")
        for name in ("channels", "head_channels"):
            require_range(getattr(self, name), 1, MAX_WIDTH, f"model.{name}")
        require_range(self.layers, 1, MAX_LAYERS, "model.layers")
        for name in ("kernel", "first_kernel"):
            value = getattr(self, name)
            require(value >= 3 and value % 2 == 1, f"model.{name}", "must be odd and >= 3")
            require_range(value, 3, MAX_KERNEL, f"model.{name}")
        self.transformer.check()


@dataclass
class PriorConfig:
    """Stage 2. The grid, K and the VQ-VAE come from the codes folder, not from here."""

    # the sections that build the model: a resumed run must not change them (trainer/run/resume_check.py)
    MODEL_SECTIONS: ClassVar[tuple[str, ...]] = ("model",)
    out_dir: str = "runs/prior"
    seed: int = 0
    codes: CodesConfig = field(default_factory=CodesConfig)
    model: PriorModelConfig = field(default_factory=PriorModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    sample_every: int = 0  # log a grid of generated brains every N steps (0: only at the end)
    sample_count: int = 8

    def check(self) -> None:
        check_seed(self.seed)
        check_sections(self)
        require(self.sample_every >= 0, "sample_every", "must be >= 0")
        require_range(self.sample_count, 1, MAX_SAMPLES, "sample_count")
