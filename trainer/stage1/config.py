"""Stage 1's config: the VQ-VAE, its quantizer, its loss and the shards it trains on (configs/vqvae_*.yaml)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

from common.limits import (
    MAX_BATCH,
    MAX_CODES,
    MAX_DISCRIMINATOR_LAYERS,
    MAX_LAYERS,
    MAX_LOADER_WORKERS,
    MAX_WIDTH,
)
from trainer.run.config_file import check_sections, require, require_range
from trainer.run.train_config import TrainConfig, WandbConfig, check_seed


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
        require_range(self.batch_size, 1, MAX_BATCH, "data.batch_size")
        require(self.shuffle_buffer >= 1, "data.shuffle_buffer", "must be >= 1 (1: no shuffling within a shard)")
        require(self.in_memory in ("auto", "always", "never"), "data.in_memory", "must be auto, always or never")
        require(self.memory_budget_mb >= 0, "data.memory_budget_mb", "must be >= 0")
        require(self.in_memory_on in ("device", "host"), "data.in_memory_on", "must be device or host")
        require_range(self.num_workers, 0, MAX_LOADER_WORKERS, "data.num_workers")
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
        require_range(self.channels, 2, MAX_WIDTH, "model.channels")
        require_range(self.res_channels, 1, MAX_WIDTH, "model.res_channels")
        require_range(self.code_dim, 1, MAX_WIDTH, "model.code_dim")
        require_range(self.res_blocks, 0, MAX_LAYERS, "model.res_blocks")


@dataclass
class QuantizerConfig:
    kind: str = "vq"  # "vq": a learned codebook (stage1/quantizer.py); "fsq": finite scalars (stage1/fsq.py)
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
        require_range(self.codebook_dim, 0, MAX_WIDTH, "quantizer.codebook_dim")
        if self.kind == "fsq":
            require(
                len(self.levels) >= 1 and all(level >= 2 for level in self.levels),
                "quantizer.levels",
                "must be a non-empty list of integers >= 2",
            )
            require(
                math.prod(self.levels) <= MAX_CODES,
                "quantizer.levels",
                f"their product ({math.prod(self.levels)}) must be at most {MAX_CODES}: code indices are stored as "
                "uint16",
            )
            require(
                math.prod(self.levels) == self.num_codes,
                "quantizer.num_codes",
                f"must equal the product of quantizer.levels {self.levels} ({math.prod(self.levels)}) for fsq",
            )
        require_range(self.num_codes, 2, MAX_CODES, "quantizer.num_codes")  # code indices are stored as uint16
        require(self.beta >= 0, "quantizer.beta", "must be >= 0")
        require(self.update in ("ema", "loss"), "quantizer.update", "must be 'ema' or 'loss'")
        require(0 <= self.decay < 1, "quantizer.decay", "must be in [0, 1)")
        require(self.dead_code_threshold >= 0, "quantizer.dead_code_threshold", "must be >= 0")


@dataclass
class AdversarialConfig:
    """VQGAN's adversarial term (Esser et al. 2021; stage1/adversarial.py): a PatchGAN discriminator
    (stage1/discriminator.py) trained against the decoder, whose loss joins the generator's as weight x lambda x L_gan,
    lambda the adaptive weight (the ratio of the two losses' gradient norms at the decoder's last layer). Off while
    `weight` is 0, the default: then no discriminator is built, drawn, trained or saved, and a run is the one
    without this section."""

    weight: float = 0.0  # 0: off. VQGAN: 0.8 (with the adaptive weight)
    kind: str = "hinge"  # "hinge" or "non_saturating" (the logistic loss, -log D(fake) for the generator)
    adaptive: bool = True  # scale L_gan by lambda (VQGAN); false: weight x L_gan (MONAI's brain tutorials: 0.01)
    start_step: int = 0  # optimizer steps before the term and the discriminator's training begin (both at once)
    lr: float = 2e-4  # the discriminator's AdamW (betas (0.5, 0.9) as VQGAN's, no weight decay), constant
    channels: int = 64  # the discriminator's first width; it doubles per layer up to 8 x this
    layers: int = 3  # stride-2 layers after the first: 3 gives 70x70 patches, a 30x30 grid of logits

    def check(self) -> None:
        require(self.weight >= 0, "loss.adversarial.weight", "must be >= 0 (0: off)")
        require(self.kind in ("hinge", "non_saturating"), "loss.adversarial.kind", "must be hinge or non_saturating")
        require(self.start_step >= 0, "loss.adversarial.start_step", "must be >= 0")
        require(self.lr > 0, "loss.adversarial.lr", "must be > 0")
        require_range(self.channels, 1, MAX_WIDTH // 8, "loss.adversarial.channels")  # its widest layer: 8 x this
        require_range(self.layers, 1, MAX_DISCRIMINATOR_LAYERS, "loss.adversarial.layers")


@dataclass
class LossConfig:
    """Stage 1's reconstruction loss: MSE + ssim_weight * (1 - SSIM) (SSIM as everywhere: Gaussian 11, sigma
    1.5, data range 1), a structure term against MSE's blur (Zhao et al., "Loss functions for image restoration"),
    and optionally an adversarial term against what blur remains (`adversarial`)."""

    ssim_weight: float = 0.0
    adversarial: AdversarialConfig = field(default_factory=AdversarialConfig)

    def check(self) -> None:
        require(self.ssim_weight >= 0, "loss.ssim_weight", "must be >= 0")
        self.adversarial.check()


@dataclass
class InitConfig:
    """Where training starts: random weights (the default), or a trained stage-1 checkpoint's, whose model and
    quantizer sections must be this config's. With `decoder_only` the encoder and the quantizer (codebook, EMA
    statistics, restarts) stay that checkpoint's and only the decoder trains: every slice keeps its codes, so a prior
    trained on them still applies (`export onnx --vqvae`, trainer/stage2/load.py). That is how a sharper decoder,
    trained with the adversarial term, serves a prior already trained, as Stable Diffusion's autoencoder had its
    decoder alone fine-tuned."""

    checkpoint: str = ""  # a stage-1 checkpoint folder, or a run folder (its newest checkpoint); "": random weights
    decoder_only: bool = False  # freeze the encoder and the quantizer: the codes stay the checkpoint's

    def check(self) -> None:
        require(not self.decoder_only or bool(self.checkpoint), "init.decoder_only", "needs init.checkpoint")


@dataclass
class VQVAEConfig:
    # the sections that build the model: a resumed run must not change them (trainer/run/resume_check.py)
    MODEL_SECTIONS: ClassVar[tuple[str, ...]] = ("model", "quantizer")
    out_dir: str = "runs/vqvae"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    quantizer: QuantizerConfig = field(default_factory=QuantizerConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    init: InitConfig = field(default_factory=InitConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)

    def check(self) -> None:
        check_seed(self.seed)
        check_sections(self)
        # fp16's loss scaling: Accelerate keeps one GradScaler, and each of two optimizers' steps would update it,
        # unscaling the discriminator's gradients with a scale they were not scaled by
        require(
            not (self.loss.adversarial.weight and self.train.mixed_precision == "fp16"),
            "loss.adversarial.weight",
            "the adversarial term does not train under train.mixed_precision fp16 (one loss scale for two "
            "optimizers); use bf16 or no",
        )
