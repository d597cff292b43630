"""Shared fixtures and helpers: the embedded demo data, synthetic layouts for bad-input tests, real OASIS
paths, the tiny training config, free ports for multi-process tests, a terminal's Ctrl-C, and tiny saved models."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from common.digest import file_sha256
from common.png_header import read_slice
from trainer.run.checkpoint import save_checkpoint
from trainer.run.config_file import config_to_dict
from trainer.stage1.config import ModelConfig, QuantizerConfig, VQVAEConfig
from trainer.stage1.vqvae import VQVAE
from trainer.stage2.codes import load_code_tensors
from trainer.stage2.config import PriorConfig, PriorModelConfig, TransformerConfig
from trainer.stage2.load import build_prior
from trainer.stage2.prior_contract import PriorShape
from trainer.stage2.prior_loss import prior_loss

REPO = Path(__file__).resolve().parents[1]
DEMO_SRC = REPO / "data_tools" / "demo_data" / "keras_png_slices_data"
OASIS_SRC = REPO.parent / "shared" / "oasis" / "keras_png_slices_data"
DEMO_CONFIG = REPO / "configs" / "vqvae_demo_cpu.yaml"


def tiny(shards: Path, out: Path, *extra: str) -> list[str]:
    """Overrides that shrink the demo config to seconds on a CPU."""
    return [
        f"data.shards={shards}",
        f"out_dir={out}",
        "data.batch_size=8",
        "model.channels=16",
        "model.res_channels=8",
        "model.code_dim=8",
        "quantizer.num_codes=32",
        "quantizer.compile=false",
        "train.max_steps=12",
        "train.warmup_steps=2",
        "train.log_every=2",
        "train.eval_every=6",
        "train.eval_batches=1",
        "train.checkpoint_every=6",
        "wandb.enabled=false",
        *extra,
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def interrupt_when(args: list[str], ready, timeout: float = 240) -> tuple[int, str]:
    """Run `python ARGS` in its own process group, send SIGINT to the group once `ready(stderr so far)`, and
    return (exit status, stderr). The SIGINT disposition is reset to the default in the child, as a shell
    started in the background (as test runners often are) passes SIGINT on ignored."""
    process = subprocess.Popen(
        [sys.executable, *args],
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: chunks.extend(iter(lambda: process.stderr.read1(4096), b"")))
    reader.start()
    deadline = time.monotonic() + timeout
    try:
        while not ready(b"".join(chunks).decode(errors="replace")):
            assert process.poll() is None, b"".join(chunks).decode(errors="replace")
            assert time.monotonic() < deadline, "the command never got going"
            time.sleep(0.1)
        os.killpg(process.pid, signal.SIGINT)
        status = process.wait(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)  # the group: workers too
            process.wait()
        reader.join(timeout=10)
    return status, b"".join(chunks).decode(errors="replace")


def make_layout(root: Path, subjects: dict[str, list[str]], slices: int = 3) -> Path:
    """A small keras_png_slices_data tree made of demo images: {split: [subject ids]}."""
    demo = sorted((DEMO_SRC / "keras_png_slices_train").glob("*.png"))
    for split, ids in subjects.items():
        folder = root / f"keras_png_slices_{split}"
        folder.mkdir(parents=True, exist_ok=True)
        for n, subject in enumerate(ids):
            for i in range(slices):
                shutil.copy(demo[(n * slices + i) % len(demo)], folder / f"case_{subject}_slice_{i}.nii.png")
    return root


@pytest.fixture
def small_layout(tmp_path: Path) -> Path:
    return make_layout(tmp_path / "src", {"train": ["001", "002"], "validate": ["003"], "test": ["004"]})


@pytest.fixture(scope="session")
def demo_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo data sharded small (several shards per split), shared by the read-only tests."""
    from data_tools.shard import shard_dataset

    out = tmp_path_factory.mktemp("demo") / "shards"
    shard_dataset(DEMO_SRC, out, samples_per_shard=12, workers=2, show_progress=False)
    return out


# Tiny random-weight VQ-VAE and priors saved as checkpoints: shared by the export and reliability tests.
K, GRID, SLICES = 32, 16, 4  # downsample 16: 256x256 slices -> 16x16 grids
TRAIN_PNGS = sorted((DEMO_SRC / "keras_png_slices_train").glob("*.png"))[:8]


def slices(paths: list[Path]) -> np.ndarray:
    """(N, 1, 256, 256) float32 in [0, 1]."""
    return np.stack([read_slice(p, p.name, 256) for p in paths])[:, None].astype(np.float32) / 255


def save_vqvae(root: Path, seed: int, visible: bool = False) -> Path:
    """A tiny random VQ-VAE; `visible`: its decoder's outputs spread over [0, 1] (mean 0.5, std 0.2 on the demo
    slices' codes), where a random decoder's are about 0 and clamp to black images."""
    cfg = VQVAEConfig(
        model=ModelConfig(downsample=16, channels=16, res_channels=8, code_dim=8),
        quantizer=QuantizerConfig(num_codes=K, compile=False),
    )
    torch.manual_seed(seed)
    model = VQVAE(cfg.model, cfg.quantizer).eval()
    # A random encoder's outputs barely vary, so every cell would be a near-tie between codes:
    # standardise them on demo slices, then draw the codes from them (as training starts).
    with torch.no_grad():
        z = model.encoder(torch.from_numpy(slices(TRAIN_PNGS))).permute(0, 2, 3, 1).reshape(-1, 8)
        mean, std = z.mean(0), z.std(0)
        projection = model.encoder.net[-1]
        projection.weight.div_(std[:, None, None, None])
        projection.bias.sub_(mean).div_(std)
        model.quantizer.codebook.copy_(((z - mean) / std)[torch.randperm(len(z))[:K]])
        if visible:
            out = model.decoder(model.quantizer.lookup(model.encode(torch.from_numpy(slices(TRAIN_PNGS)))))
            gain, last = 0.2 / out.std(), model.decoder.net[-1]
            last.weight.mul_(gain)
            last.bias.mul_(gain).add_(0.5 - gain * out.mean())
    return save_checkpoint(root / f"vqvae{seed}", 1, model, {}, config_to_dict(cfg), keep=1)


def save_prior(
    root: Path, vqvae: Path, num_conditions: int, kind: str = "pixelcnn", codes: Path | None = None, steps: int = 0
) -> Path:
    """A tiny prior over the VQ-VAE's grids, random or trained `steps` steps on the train split of `codes` (the
    codes folder its prior.json records)."""
    transformer = TransformerConfig(layers=2, width=16, heads=2, kv_heads=1, mlp_ratio=2, dropout=0.0)
    cfg = PriorConfig(
        model=PriorModelConfig(
            kind=kind,
            channels=8,
            layers=3,
            kernel=3,
            first_kernel=5,
            head_channels=16,
            condition_on_slice=bool(num_conditions),
            transformer=transformer,
        )
    )
    torch.manual_seed(1)
    prior = build_prior(cfg, PriorShape(K, GRID, GRID, num_conditions))
    if steps:
        fit(prior, codes, steps)
    info = {
        **vars(prior.shape),
        "vqvae_checkpoint": str(vqvae),
        "vqvae_sha256": file_sha256(vqvae / "model.safetensors"),
        "codes_dir": "" if codes is None else str(codes),
    }
    return save_checkpoint(
        root / f"prior_{kind}{num_conditions}" / "checkpoints",
        1,
        prior,
        {},
        config_to_dict(cfg),
        keep=1,
        extra_json={"prior.json": info},
    )


def fit(prior: torch.nn.Module, codes: Path, steps: int) -> None:
    """Train a prior `steps` Adam steps on 16 random grids of the train split of `codes` each, then set it to eval."""
    grids, conditions = load_code_tensors(codes, "train", prior.shape)
    optimizer = torch.optim.Adam(prior.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        index = torch.randint(0, len(grids), (16,), generator=generator)
        loss, _ = prior_loss(prior(grids[index], None if conditions is None else conditions[index]), grids[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    prior.eval()
