"""Codebook perplexity: the one definition, shared by the torch side and the torch-free runtime.

It takes the array module as an argument (`xp`: numpy by default, torch from trainer/stage1/quantizer.py), so
that the quantizer can compute it on the device, inside a compiled graph and without a host sync, while
figures and reports compute it in numpy; this module itself never imports torch.
"""

from __future__ import annotations

import numpy as np


def perplexity(counts, xp=np):
    """exp(entropy) of code usage: the number of equally used codes it is worth (1.0 for no counts).

    counts: uses per code (K,). numpy: any array-like, computed in float64, returns a float. torch:
    a tensor, computed in float32 on its device, returns a 0-d tensor."""
    probs = xp.asarray(counts) * 1.0  # integer counts -> floating point (float64 in numpy, float32 in torch)
    probs = probs / probs.sum().clip(min=1)
    value = xp.exp(-(probs * xp.log(xp.where(probs > 0, probs, 1))).sum())  # 0 log 0 = 0
    return float(value) if xp is np else value
