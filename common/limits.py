"""The documented bounds of every count, seed and thread number the commands and configs accept, and why each.

A number past these does no useful work: it ends in a memory error, an overflow inside numpy or torch, or a
machine swamped for minutes. So options (common/cli.py) and config keys (trainer/*/config.py) refuse it before
any work, naming the option or the key. Torch-free, like the rest of common/.
"""

from __future__ import annotations

import os

# Code indices are stored as uint16 everywhere (codes/{split}.npz, samples.npz, the 16-bit code-map PNGs,
# reconstruct's codes.npz): K above this would wrap every index.
MAX_CODES = 2**16
# Brains one command generates and holds at once (--n, sample_count): their images alone take 256 KiB each
# as float32, 2.5 GiB at the maximum.
MAX_SAMPLES = 10_000
# Images (or code grids) in one batch (--batch-size, data.batch_size, codes.batch_size): 4,096 slices are
# 1 GiB as float32 before any activation.
MAX_BATCH = 4096
# Image pairs for the MS-SSIM diversity (--max-pairs): about 10 ms each on a CPU core, so 15 minutes at most.
MAX_PAIRS = 100_000
# Slices on one preview sheet (data_tools preview --count): 1,024 are an 8,192 x 8,192 image.
MAX_PREVIEW = 1024
# Seeds: numpy's legacy generator (np.random.seed, which accelerate's set_seed calls) takes 0 to 2**32 - 1.
MAX_SEED = 2**32 - 1
# Cross-validation folds of the realism test (--realism-folds): each trains a classifier afresh, one to two
# minutes on a CPU core for a split of 544 slices; 20 is already more than the 17 subjects of an OASIS test split.
MAX_FOLDS = 20
# Slice positions per volume (shard --positions): a volume has at most a few thousand slices along an axis, and
# each position is a slice condition the prior learns an embedding for.
MAX_POSITIONS = 4096
# Synthetic lesions per slice (data_tools lesions --max-lesions): lesions that may not touch, each up to 30 pixels
# in radius, stop fitting inside a 256x256 head well before this; past it, slices only hold fewer than asked for.
MAX_LESIONS = 16
# Healings per slice (anomaly --healings): each is one more row in every prior step and one more decode; their mean
# stops changing long before this, and 64 rows of a 1,024-step pass are a minute per slice on a CPU core.
MAX_HEALINGS = 64
# Layer widths (channels, code dimension, transformer width) and depths: far beyond any model here, well
# below what overflows a weight allocation.
MAX_WIDTH = 8192
MAX_LAYERS = 256
# Stride-2 layers of stage 1's PatchGAN discriminator after its first (loss.adversarial.layers): a 256x256 slice
# halved 7 times, then through its two stride-1 4x4 convolutions, leaves no patch to judge; 6 leave a 2x2 grid.
MAX_DISCRIMINATOR_LAYERS = 6
# DataLoader workers per training process (data.num_workers). A fixed bound, not the cores of the machine that
# reads the config: a checkpoint's config is checked again wherever it is evaluated.
MAX_LOADER_WORKERS = 64


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity (taskset, a container's cpuset) where the OS has
    one, else the machine's count. More threads or workers than this only make them wait for each other."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1
