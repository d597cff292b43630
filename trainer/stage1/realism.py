"""How alike two sets of images are, by a test that cannot be fooled: a classifier two-sample test
(Lopez-Paz & Oquab 2017). A small CNN, trained from scratch (no download, no pretrained weights), learns
to tell set a from set b; its accuracy on images it never trained on is the answer. 0.5: it cannot tell
them apart; 1.0: every held-out image is told apart. Unlike a Fréchet distance in a fixed feature space,
it sees whatever differs (blur, texture, noise, anatomy) as long as the differing is learnable.

The protocol (each choice closes a way to fool it or to be fooled by it):
- The larger set is subsampled (seeded, spread over as many groups as it can) to the size of the smaller:
  chance is exactly 0.5.
- k-fold cross-validation by GROUP: a group (a subject: the slices of one brain) lies wholly on one side of
  each fold, so the classifier cannot score by recognising the subject of a held-out slice from its other
  slices. A group id names the same subject in both sets (a reconstruction and its original stay in one fold).
- Every image is held out exactly once, so the accuracy over all folds is the balanced accuracy; its
  standard error is given two ways: binomial over the held-out predictions (slices of one subject are not
  independent, so this one is optimistic), and across folds. With few subjects a side the accuracy strays
  from 0.5 either way, below it too (a held-out subject leaves its own set's training share less like
  itself): read a result beside a real-vs-real baseline of the same subjects' count.
- Images are area-downsampled to `size` (128 from 256: each pixel the mean of 2x2), the classifier trains
  for a fixed number of epochs with a fixed cosine schedule (nothing is tuned on a held-out fold), and the
  only augmentation is the left-right mirror (rows flipped: the anatomical midline runs horizontally on
  these slices). Nothing that blurs, adds noise or rescales intensities, which could hide a difference.
- Deterministic for a seed on the CPU: the same numbers twice, in one process or another.

Beside the accuracy, a Fréchet distance in the classifier's own penultimate features (the 64 pooled
channels) between the held-out images of the two sets, averaged over the folds: features that are not the
VQ-VAE's, learnt on these two sets. Read it against a real-vs-real baseline measured the same way.
"""

from __future__ import annotations

import argparse
import math
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from common.cli_types import integer
from common.limits import MAX_FOLDS, MAX_SEED
from common.shard_format import read_manifest
from trainer.stage1.data import read_split


@dataclass(frozen=True)
class ClassifierSettings:
    """The classifier and its training: fixed, recorded beside every result."""

    channels: tuple[int, ...] = (16, 32, 64, 64)  # one strided 3x3 convolution each: 128 -> 8 pixels
    epochs: int = 12
    batch_size: int = 32
    learning_rate: float = 2e-3
    mirror: bool = True  # random left-right flips (rows); the only augmentation


SETTINGS = ClassifierSettings()
SIZE = 128  # the side images are area-downsampled to (256 -> 128: each pixel the mean of 2x2)


@dataclass
class RealismResult:
    accuracy: float  # held-out accuracy over all folds (each image held out once): 0.5 = indistinguishable
    stderr: float  # binomial, over the 2 x n_per_side held-out predictions
    fold_stderr: float  # the standard deviation of the fold accuracies / sqrt(folds)
    fold_accuracies: list[float]
    frechet: float | None  # in the classifier's penultimate features of the held-out images, mean over folds
    n_per_side: int
    folds: int
    seconds: float

    def as_dict(self) -> dict:
        return asdict(self)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)) for feature sets a (N, D) and b (M, D).

    tr((S_a S_b)^(1/2)) is the sum of the square roots of the eigenvalues of the symmetric
    sqrt(S_a) S_b sqrt(S_a), which has the same eigenvalues: stable in float64, no scipy needed.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sets must be (N, D) with the same D, got shapes {a.shape} and {b.shape}")
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"need at least 2 rows in each feature set to fit a covariance, got {len(a)} and {len(b)}")
    cov_a, cov_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    eigenvalues, eigenvectors = np.linalg.eigh(cov_a)
    sqrt_a = (eigenvectors * np.sqrt(eigenvalues.clip(min=0))) @ eigenvectors.T
    middle = sqrt_a @ cov_b @ sqrt_a
    trace_sqrt = np.sqrt(np.linalg.eigvalsh((middle + middle.T) / 2).clip(min=0)).sum()
    mean_term = np.sum((a.mean(0) - b.mean(0)) ** 2)
    return max(0.0, float(mean_term + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_sqrt))


class RealismClassifier(nn.Module):
    """Strided 3x3 convolutions with BatchNorm and LeakyReLU, global average pool, one logit (set b).

    BatchNorm, not GroupNorm: a per-image normalisation divides each image's responses by their own spread, so
    an image with less fine detail than another (blur) looks much the same after it. With GroupNorm the
    classifier told OASIS reconstructions from real training slices at 0.62 (12 epochs) and not from their own
    originals at all (0.50 after 8 epochs, one fold); with BatchNorm it tells every one apart in both
    (docs/benchmarks.md). Held-out images are classified with the statistics of the training images."""

    def __init__(self, channels: tuple[int, ...] = SETTINGS.channels):
        super().__init__()
        layers, previous = [], 1
        for width in channels:
            layers += [nn.Conv2d(previous, width, 3, stride=2, padding=1), nn.BatchNorm2d(width), nn.LeakyReLU(0.2)]
            previous = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(previous, 1)

    def embed(self, x: Tensor) -> Tensor:
        """The penultimate features: (B, channels[-1])."""
        return self.features(x).mean(dim=(2, 3))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.embed(x))[:, 0]


def fine_detail(images: np.ndarray) -> float:
    """The fine detail that blur removes, the cue that gives decoded slices away: per slice the mean absolute
    4-neighbour Laplacian where the slice is above 20 of 255 (inside the head), on the 0-255 scale, then the mean over
    slices. `images` (N, H, W) or (N, 1, H, W), uint8 or floats in [0, 1]."""
    scale = 1.0 if np.issubdtype(images.dtype, np.integer) else 255.0
    means = []
    for image in images.reshape(-1, *images.shape[-2:]):
        x = image.astype(np.float64) * scale
        centre = x[1:-1, 1:-1]
        laplacian = np.abs(4 * centre - x[:-2, 1:-1] - x[2:, 1:-1] - x[1:-1, :-2] - x[1:-1, 2:])
        means.append(laplacian[centre > 20].mean() if (centre > 20).any() else 0.0)
    return float(np.mean(means))


def realism_test(
    a: np.ndarray,
    a_groups,
    b: np.ndarray,
    b_groups,
    *,
    folds: int = 5,
    seed: int = 0,
    size: int = SIZE,
    device: str = "cpu",
    progress: str | None = None,
) -> RealismResult:
    """How well a classifier tells set a from set b on held-out images (see the module docstring).

    a, b: (N, H, W) or (N, 1, H, W) images, uint8 or floats in [0, 1], both of one size, at least `size`; give both
    as uint8 (`as_uint8`) when one set is real slices, so the quantisation of PNGs is no difference.
    a_groups, b_groups: one id per image (a subject; one id, one subject, in both sets). `folds` must be 2 to
    `fold_limit(a_groups, b_groups)`. `progress`: the description of a progress bar, or None for none."""
    started = time.perf_counter()
    a, a_groups = check_set("a", a, a_groups, size)
    b, b_groups = check_set("b", b, b_groups, size)
    if a.shape[1:] != b.shape[1:]:
        raise ValueError(f"the two sets' images differ in size: {a.shape[1:]} and {b.shape[1:]}")
    limit = fold_limit(a_groups, b_groups)
    if not 2 <= folds <= limit:
        raise ValueError(f"folds must be 2 to {limit} (the fewest groups a set has once balanced), got {folds}")
    rng = np.random.default_rng(seed)
    n = min(len(a), len(b))
    keep_a, keep_b = balanced(a_groups, n, rng), balanced(b_groups, n, rng)
    fold = np.concatenate(assign_folds(a_groups[keep_a], b_groups[keep_b], folds, rng))
    x = torch.cat([prepare(a[keep_a], size), prepare(b[keep_b], size)]).to(device)
    y = torch.cat([torch.zeros(n), torch.ones(n)]).to(device)
    correct, fold_accuracies, frechets = 0, [], []
    with tqdm(total=folds * SETTINGS.epochs, desc=progress, disable=progress is None) as bar:
        for k in range(folds):
            held_out = torch.from_numpy(fold == k).to(device)
            model = train_classifier(x[~held_out], y[~held_out], fold_seed(seed, k), bar)
            logits, features = predict(model, x[held_out])
            right = (logits > 0).float() == y[held_out]
            correct += int(right.sum())
            fold_accuracies.append(float(right.float().mean()))
            labels = y[held_out].cpu().numpy()
            if min((labels == 0).sum(), (labels == 1).sum()) >= 2:  # a covariance needs 2 of each
                frechets.append(frechet_distance(features[labels == 0], features[labels == 1]))
    accuracy = correct / (2 * n)
    return RealismResult(
        accuracy=accuracy,
        stderr=math.sqrt(accuracy * (1 - accuracy) / (2 * n)),
        fold_stderr=float(np.std(fold_accuracies, ddof=1) / math.sqrt(folds)),
        fold_accuracies=fold_accuracies,
        frechet=float(np.mean(frechets)) if frechets else None,
        n_per_side=n,
        folds=folds,
        seconds=time.perf_counter() - started,
    )


def check_set(name: str, images, groups, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The images as (N, H, W) and the group ids as strings; a set a classifier cannot read is refused."""
    images = np.asarray(images)
    if images.ndim == 4 and images.shape[1] == 1:
        images = images[:, 0]
    if images.ndim != 3:
        raise ValueError(f"set {name}: images must be (N, H, W) or (N, 1, H, W), got shape {images.shape}")
    if len(images) == 0:
        raise ValueError(f"set {name} is empty")
    if min(images.shape[1:]) < size:
        raise ValueError(f"set {name}: images of {images.shape[1:]} pixels are smaller than size {size}")
    if images.dtype != np.uint8:
        if not np.issubdtype(images.dtype, np.floating):
            raise ValueError(f"set {name}: images must be uint8 or floats in [0, 1], got dtype {images.dtype}")
        if not (np.isfinite(images).all() and images.min() >= 0 and images.max() <= 1):
            raise ValueError(f"set {name}: float images must be finite and in [0, 1]")
    groups = np.array([str(g) for g in groups])
    if len(groups) != len(images):
        raise ValueError(f"set {name}: {len(images)} images but {len(groups)} group ids")
    return images, groups


def fold_limit(a_groups, b_groups) -> int:
    """The most folds two sets allow: the fewest groups either keeps once the larger is cut to the smaller's size
    (`balanced` keeps as many groups as it can)."""
    n = min(len(a_groups), len(b_groups))
    return min(n, len(set(map(str, a_groups))), len(set(map(str, b_groups))))


def balanced(groups: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """`n` of the images (indices, sorted), drawn in turns over the groups: one image of every group (groups
    in random order), then a second of every group, ...; so as many groups as possible are kept."""
    if len(groups) == n:
        return np.arange(n)
    order = rng.permutation(len(groups))
    _, group = np.unique(groups[order], return_inverse=True)
    by_group = np.argsort(group, kind="stable")
    starts = np.searchsorted(group[by_group], group[by_group])
    turn = np.empty(len(order), dtype=np.int64)
    turn[by_group] = np.arange(len(order)) - starts  # the image's place within its group
    group_rank = rng.permutation(group.max() + 1)
    return np.sort(order[np.argsort(turn * len(group_rank) + group_rank[group], kind="stable")[:n]])


def assign_folds(
    a_groups: np.ndarray, b_groups: np.ndarray, folds: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """The fold of each image of a and of b. Whole groups go to one fold (a group id shared by both sets is one
    group), largest first (ties in random order), each to the fold furthest below its share of the images of
    the sets the group holds images of, so every fold gets images of both sets."""
    names, group = np.unique(np.concatenate([a_groups, b_groups]), return_inverse=True)
    counts = np.zeros((len(names), 2))
    np.add.at(counts, (group, np.repeat([0, 1], [len(a_groups), len(b_groups)])), 1)
    order = rng.permutation(len(names))
    order = order[np.argsort(-counts[order].sum(1), kind="stable")]
    share, load = counts.sum(0) / folds, np.zeros((folds, 2))
    fold_of = np.empty(len(names), dtype=np.int64)
    for g in order:
        fold_of[g] = int(np.argmax((share - load) @ counts[g]))
        load[fold_of[g]] += counts[g]
    if (load == 0).any():
        raise ValueError(f"could not give each of {folds} folds images of both sets; use fewer folds")
    image_fold = fold_of[group]
    return image_fold[: len(a_groups)], image_fold[len(a_groups) :]


def prepare(images: np.ndarray, size: int, chunk: int = 256) -> Tensor:
    """(N, H, W) uint8 or [0, 1] floats -> (N, 1, size, size) float32 in [-1, 1], area-downsampled (each pixel
    the mean of the pixels it covers: no interpolation that would sharpen or alias)."""
    out = []
    for start in range(0, len(images), chunk):
        x = torch.from_numpy(np.ascontiguousarray(images[start : start + chunk]))[:, None]
        x = x.float() / 255 if x.dtype == torch.uint8 else x.float()
        out.append(F.interpolate(x, size=(size, size), mode="area") if x.shape[-2:] != (size, size) else x)
    return torch.cat(out) * 2 - 1


def fold_seed(seed: int, fold: int) -> int:
    """The torch seed of one fold's classifier: its initial weights, batch order and flips."""
    return int(np.random.default_rng((seed, fold)).integers(2**62))


def train_classifier(x: Tensor, y: Tensor, seed: int, bar: tqdm) -> RealismClassifier:
    """A fresh classifier trained on (x, y) for SETTINGS.epochs with Adam and a cosine schedule to 0; the loss
    weighs both sets equally whatever their counts in this fold. The global torch RNG is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = RealismClassifier(SETTINGS.channels).to(x.device)
    generator = torch.Generator().manual_seed(seed)
    batches = math.ceil(len(x) / SETTINGS.batch_size)
    steps = SETTINGS.epochs * batches
    optimizer = torch.optim.Adam(model.parameters(), lr=SETTINGS.learning_rate)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / steps)))
    pos_weight = (y == 0).sum() / (y == 1).sum()
    model.train()
    for _ in range(SETTINGS.epochs):
        order = torch.randperm(len(x), generator=generator).to(x.device)
        for batch in order.tensor_split(batches):  # of even sizes: BatchNorm needs more than one image
            images = x[batch]
            if SETTINGS.mirror:
                flip = (torch.rand(len(batch), generator=generator) < 0.5).to(x.device)
                images = torch.where(flip[:, None, None, None], images.flip(2), images)
            loss = F.binary_cross_entropy_with_logits(model(images), y[batch], pos_weight=pos_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        bar.update(1)
    return settle_batch_norm(model, x, generator)


@torch.no_grad()
def settle_batch_norm(model: RealismClassifier, x: Tensor, generator: torch.Generator) -> RealismClassifier:
    """The model for held-out images, its BatchNorm statistics recomputed over all training images (batches as in
    training) for the final weights. The running averages lag the weights, and on a small set they shifted every
    held-out logit to one side (a whole fold classified as one set)."""
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a plain average over the batches below
    order = torch.randperm(len(x), generator=generator).to(x.device)
    for batch in order.tensor_split(math.ceil(len(x) / SETTINGS.batch_size)):
        model(x[batch])
    return model.eval()


@torch.no_grad()
def predict(model: RealismClassifier, x: Tensor, batch_size: int = 128) -> tuple[Tensor, np.ndarray]:
    """Logits (N,) and penultimate features (N, D) float64 of held-out images."""
    features = torch.cat([model.embed(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])
    return model.head(features)[:, 0], features.double().cpu().numpy()


# ---- what `trainer evaluate` and `trainer evaluate-prior` report ---------------------------------------------


@dataclass(frozen=True)
class RealismOptions:
    """--realism-folds and --realism-seed: the folds asked for (fewer when a set has fewer groups) and the seed of
    the reference subjects, the subsampling, the folds and the classifiers."""

    folds: int = 5
    seed: int = 0


DEFAULT_OPTIONS = RealismOptions()
TURNED_OFF = {"skipped": "turned off (--no-realism)"}  # summary.json's `realism` then


def add_realism_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    """--realism/--no-realism, --realism-folds, --realism-seed of `trainer evaluate` and `trainer evaluate-prior`."""
    parser.add_argument(
        "--realism",
        action=argparse.BooleanOptionalAction,
        default=True,
        help=f"the classifier two-sample test of {what}, beside real against real training slices "
        "(held-out accuracy, 0.5 = indistinguishable; on --device, about 2 minutes of one CPU core per comparison "
        "of 544 slices a side); --no-realism skips it (default: on)",
    )
    parser.add_argument(
        "--realism-folds",
        type=integer(2, MAX_FOLDS),
        default=5,
        help=f"cross-validation folds of the realism test, 2 to {MAX_FOLDS}; fewer when a set holds fewer "
        "subjects, and the test is skipped (said in summary.json) when one holds a single subject "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--realism-seed",
        type=integer(0, MAX_SEED),
        default=0,
        help=f"seed of the realism test (reference subjects, subsampling, folds, classifiers), 0 to {MAX_SEED} "
        "(default: %(default)s)",
    )


def realism_options(args: argparse.Namespace) -> RealismOptions | None:
    """The options above as the commands take them: None for --no-realism."""
    return RealismOptions(args.realism_folds, args.realism_seed) if args.realism else None


def as_uint8(images: Tensor) -> np.ndarray:
    """Images in [0, 1] as the 8-bit pixels a PNG of them holds, as real slices are: the classifier must not
    tell the sets apart by their quantisation."""
    return images.clamp(0, 1).mul(255).round().to(torch.uint8).cpu().numpy()


def train_reference(shards: str | Path, subjects: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """The real reference of both commands: `subjects` whole subjects of the train split, drawn with `seed`, as
    uint8 (N, H, W) with each slice's subject. Whole subjects hold every slice position, as the split compared
    with them does, so the position of a slice tells the classifier nothing."""
    available = sorted(read_manifest(shards)["splits"]["train"]["subjects"])
    chosen = np.random.default_rng(seed).permutation(len(available))[:subjects]
    pixels, owners = read_split(shards, "train", {available[i] for i in chosen})
    return pixels[:, 0].numpy(), owners


def realism_report(
    comparisons: dict[str, tuple[np.ndarray, list, np.ndarray, list]],
    options: RealismOptions,
    device: str = "cpu",
    show_progress: bool = True,
) -> dict:
    """summary.json's `realism`: each comparison name -> (a, a_groups, b, b_groups) run through `realism_test`
    with the folds cut to what its sets allow (`fold_limit`), or {"skipped": why} when they allow fewer than 2;
    and the settings, so the numbers can be read and reproduced."""
    report: dict = {
        "classifier": {**asdict(SETTINGS), "channels": list(SETTINGS.channels), "size": SIZE},
        "folds_asked": options.folds,
        "seed": options.seed,
    }
    for name, (a, a_groups, b, b_groups) in comparisons.items():
        folds = min(options.folds, fold_limit(a_groups, b_groups))
        if folds < 2:
            report[name] = {"skipped": f"a set holds {folds} group(s) (subjects); the test needs 2 in each"}
            continue
        result = realism_test(
            a,
            a_groups,
            b,
            b_groups,
            folds=folds,
            seed=options.seed,
            device=device,
            progress=f"realism: {name}" if show_progress else None,
        )
        report[name] = result.as_dict()
    return report


SUBJECT = re.compile(r"case_(\d+)", re.ASCII)


def subject_groups(names: list[str]) -> list[str]:
    """One group per OASIS subject (the number in `case_XXX`, compared as a number, as `shard` does) where a name
    holds one, else one group per name: a file name or a sample key -> its group id."""
    groups = []
    for i, name in enumerate(names):
        found = SUBJECT.search(Path(name).name)
        groups.append(f"subject {int(found.group(1))}" if found else f"image {i}")
    return groups
