"""The VQ-VAE (van den Oord et al. 2017): encoder -> vector quantizer -> decoder.

Encoder: log2(downsample) strided 4x4 convolutions (each halves the side), a 3x3 convolution,
residual blocks, and a 1x1 projection to the code dimension D. The decoder mirrors it with
transposed convolutions. Images are (B, 1, 256, 256) in [0, 1]; the decoder's output is left
linear (the MSE loss needs no squashing) and is clamped to [0, 1] only when images are produced.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from trainer.stage1.config import ModelConfig, QuantizerConfig
from trainer.stage1.fsq import FiniteScalarQuantizer
from trainer.stage1.quantizer import QuantizerOutput, VectorQuantizer


class ResidualBlock(nn.Module):
    """ReLU -> 3x3 conv -> ReLU -> 1x1 conv, added to the input (the paper's block)."""

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.block = nn.Sequential(
            nn.ReLU(),
            nn.Conv2d(channels, hidden, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(hidden, channels, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.block(x)


def widths(cfg: ModelConfig) -> list[int]:
    """Channel width after each downsampling step: halving back from `channels` (min 16)."""
    steps = int(math.log2(cfg.downsample))
    return [max(cfg.channels >> (steps - 1 - i), min(16, cfg.channels)) for i in range(steps)]


class Encoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        layers: list[nn.Module] = []
        in_channels = 1
        for width in widths(cfg):
            layers += [nn.Conv2d(in_channels, width, 4, stride=2, padding=1), nn.ReLU()]
            in_channels = width
        layers.append(nn.Conv2d(in_channels, cfg.channels, 3, padding=1))
        layers += [ResidualBlock(cfg.channels, cfg.res_channels) for _ in range(cfg.res_blocks)]
        layers += [nn.ReLU(), nn.Conv2d(cfg.channels, cfg.code_dim, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class Decoder(nn.Module):
    """The encoder's mirror image: transposed convolutions up from the code grid."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(cfg.code_dim, cfg.channels, 3, padding=1)]
        layers += [ResidualBlock(cfg.channels, cfg.res_channels) for _ in range(cfg.res_blocks)]
        layers.append(nn.ReLU())
        in_channels = cfg.channels
        ups = list(reversed(widths(cfg)))[1:] + [1]
        for i, width in enumerate(ups):
            layers.append(nn.ConvTranspose2d(in_channels, width, 4, stride=2, padding=1))
            if i < len(ups) - 1:
                layers.append(nn.ReLU())
            in_channels = width
        self.net = nn.Sequential(*layers)

    def forward(self, z_q: Tensor) -> Tensor:
        return self.net(z_q)


def build_quantizer(cfg: QuantizerConfig, code_dim: int) -> VectorQuantizer | FiniteScalarQuantizer:
    if cfg.kind == "fsq":
        return FiniteScalarQuantizer(cfg.levels, code_dim)
    return VectorQuantizer(
        num_codes=cfg.num_codes,
        code_dim=code_dim,
        beta=cfg.beta,
        update=cfg.update,
        decay=cfg.decay,
        dead_code_threshold=cfg.dead_code_threshold,
        compile=cfg.compile,
        codebook_dim=cfg.codebook_dim,
        cosine=cfg.cosine,
    )


class VQVAE(nn.Module):
    def __init__(self, model: ModelConfig, quantizer: QuantizerConfig):
        super().__init__()
        self.downsample = model.downsample
        self.encoder = Encoder(model)
        self.quantizer = build_quantizer(quantizer, model.code_dim)
        self.decoder = Decoder(model)
        self.codes_frozen = False

    def freeze_codes(self) -> None:
        """Train the decoder only (config `init.decoder_only`): the encoder and the quantizer keep their weights and
        stay in eval mode whatever train() says (no EMA update, no restart), so every slice keeps its codes."""
        self.codes_frozen = True
        self.encoder.requires_grad_(False)
        self.quantizer.requires_grad_(False)
        self.train(self.training)

    def train(self, mode: bool = True) -> VQVAE:
        super().train(mode)
        if self.codes_frozen:
            self.encoder.eval()
            self.quantizer.eval()
        return self

    def forward(self, images: Tensor) -> tuple[Tensor, QuantizerOutput]:
        """Reconstruction (linear output) and the quantizer's output (losses, indices, perplexity)."""
        quantized = self.quantizer(self.encoder(images))
        return self.decoder(quantized.z_q), quantized

    def last_decoder_layer(self) -> nn.ConvTranspose2d:
        """The decoder's last layer, whose output is the image: VQGAN's adaptive weight compares the gradients of
        the reconstruction and adversarial losses at its weight (stage1/adversarial.py)."""
        return self.decoder.net[-1]

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        """Images (B, 1, H, W) in [0, 1] -> code indices (B, H / downsample, W / downsample)."""
        if self.training:
            raise RuntimeError("call model.eval() before encode(): in training mode the quantizer updates its codebook")
        return self.quantizer(self.encoder(images)).indices

    @torch.no_grad()
    def decode(self, indices: Tensor) -> Tensor:
        """Code indices (B, h, w) -> images (B, 1, h * downsample, w * downsample) in [0, 1]."""
        return self.decoder(self.quantizer.lookup(indices)).clamp(0, 1)
