"""The PatchGAN discriminator of stage 1's adversarial term: pix2pix's (Isola et al. 2017) as VQGAN uses it
(taming-transformers' NLayerDiscriminator). It judges overlapping patches, not whole slices, so it answers "is this
texture sharp and real?" at every place, which is what a blurry decoder gets wrong.

4x4 convolutions: the first and `layers - 1` more of stride 2 (width doubling from `channels`, at most 8 times),
one of stride 1, then one to a single logit per patch. Three layers give a 30x30 grid of logits on a 256x256 slice,
each seeing a 70x70 patch. LeakyReLU(0.2) throughout. The norm is GroupNorm, not pix2pix's BatchNorm: batch
statistics at 16 slices per rank are noisy, differ between ranks under DDP unless synchronised (SyncBatchNorm, a
collective per layer), and would let the discriminator tell a batch of reconstructions from a batch of real slices by
their statistics instead of judging each patch (the real and reconstructed slices go through it in one batch).
GroupNorm normalises each slice on its own, so none of this arises.
"""

from __future__ import annotations

import math

from torch import Tensor, nn

MAX_WIDTH_FACTOR = 8  # the widest layer has `channels` x this many channels, as in pix2pix


def group_norm(width: int) -> nn.GroupNorm:
    """Up to 32 groups, as many as divide `width` (a narrow layer gets one channel per group)."""
    return nn.GroupNorm(math.gcd(32, width), width)


class PatchDiscriminator(nn.Module):
    """Slices (B, 1, 256, 256) -> patch logits (B, 1, h, w), h = w = 256 / 2**layers - 2."""

    def __init__(self, channels: int, layers: int):
        super().__init__()
        blocks: list[nn.Module] = [nn.Conv2d(1, channels, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        width = channels
        for i in range(1, layers + 1):
            out = channels * min(2**i, MAX_WIDTH_FACTOR)
            stride = 2 if i < layers else 1
            blocks += [nn.Conv2d(width, out, 4, stride, padding=1, bias=False), group_norm(out), nn.LeakyReLU(0.2)]
            width = out
        blocks.append(nn.Conv2d(width, 1, 4, stride=1, padding=1))
        self.net = nn.Sequential(*blocks)
        for module in self.net:
            if isinstance(module, nn.Conv2d):  # pix2pix's initialisation
                nn.init.normal_(module.weight, 0.0, 0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images)
