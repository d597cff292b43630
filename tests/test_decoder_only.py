"""Training from a checkpoint (config `init`), and the decoder alone (`init.decoder_only`): the encoder and the
codebook stay the checkpoint's bit for bit, through a resume too, so every slice keeps its codes, and a prior trained
on those codes accepts the new decoder (load_paired_vqvae, behind sample, evaluate-prior, anomaly and export onnx)
while a VQ-VAE trained further whole is refused. Bad `init` values are one line and exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from common.digest import file_sha256
from conftest import DEMO_CONFIG, DEMO_SRC, save_prior, save_vqvae, slices, tiny
from trainer.__main__ import main as cli
from trainer.run.checkpoint import list_checkpoints
from trainer.run.config_file import load_config
from trainer.stage1.config import VQVAEConfig
from trainer.stage1.load import load_vqvae
from trainer.stage1.train import train_vqvae
from trainer.stage2.load import load_paired_vqvae

STEPS = ["train.max_steps=4", "train.checkpoint_every=4", "train.eval_every=4", "train.lr=0.01"]


def train(shards: Path, out: Path, *extra: str, resume: bool = False) -> Path:
    cfg = load_config(DEMO_CONFIG, tiny(shards, out, *STEPS, *extra), cls=VQVAEConfig)
    return train_vqvae(cfg, resume=resume, show_progress=False)[0]


def parts(checkpoint: Path) -> dict[str, dict[str, torch.Tensor]]:
    state = load_vqvae(checkpoint)[0].state_dict()
    split: dict[str, dict[str, torch.Tensor]] = {"decoder": {}, "coding": {}}
    for key, value in state.items():
        split["decoder" if key.startswith("decoder.") else "coding"][key] = value
    return split


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def prior_info(vqvae: Path) -> dict:
    """What a prior trained on `vqvae`'s codes records of it (prior.json)."""
    model = load_vqvae(vqvae)[0]
    grid = 256 // model.downsample
    return {
        "num_codes": model.quantizer.num_codes,
        "height": grid,
        "width": grid,
        "vqvae_checkpoint": str(vqvae),
        "vqvae_sha256": file_sha256(vqvae / "model.safetensors"),
    }


@pytest.fixture(scope="module")
def source(demo_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train(demo_shards, tmp_path_factory.mktemp("source") / "run")


def test_the_decoder_alone_trains_and_every_slice_keeps_its_codes(source: Path, demo_shards: Path, tmp_path: Path):
    init = [f"init.checkpoint={source.parent.parent}", "init.decoder_only=true"]  # the run folder: its newest
    tuned = train(demo_shards, tmp_path / "tuned", *init)
    before, after = parts(source), parts(tuned)
    assert same(before["coding"], after["coding"])  # weights, codebook, EMA statistics, restart count
    assert not same(before["decoder"], after["decoder"])
    images = torch.from_numpy(slices(sorted((DEMO_SRC / "keras_png_slices_test").glob("*.png"))[:4]))
    codes = [load_vqvae(c)[0].encode(images) for c in (source, tuned)]
    assert torch.equal(*codes)

    resumed = train(demo_shards, tmp_path / "tuned", *init, "train.max_steps=6", resume=True)
    assert resumed.name == "step_0000006" and same(before["coding"], parts(resumed)["coding"])
    assert not same(after["decoder"], parts(resumed)["decoder"])

    # A prior trained on the source's codes decodes through the tuned decoder, and not through a whole retrained model
    info = prior_info(source)
    assert load_paired_vqvae(info, tuned)[2] == tuned
    whole = train(demo_shards, tmp_path / "whole", f"init.checkpoint={source}")
    assert not same(before["coding"], parts(whole)["coding"])
    with pytest.raises(ValueError, match="nor a decoder trained alone on them"):
        load_paired_vqvae(info, whole)
    # ...nor once the VQ-VAE the prior records is not the one it was trained on any more
    with pytest.raises(ValueError, match="not the ones the prior was trained on"):
        load_paired_vqvae({**info, "vqvae_sha256": "0" * 64}, tuned)


def test_init_starts_from_the_checkpoint_s_weights(source: Path, demo_shards: Path, tmp_path: Path):
    """With no step taken (lr ~ 0) a run from the checkpoint is that checkpoint's model."""
    started = train(demo_shards, tmp_path / "started", f"init.checkpoint={source}", "train.lr=1e-30")
    assert same(parts(source)["decoder"], parts(started)["decoder"])


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["init.decoder_only=true"], "init.decoder_only: needs init.checkpoint"),
        (["init.checkpoint=/no/such/run"], "/no/such/run"),
        (["init.checkpoint={source}", "model.channels=32"], "weights of another model (size mismatch for"),
    ],
)
def test_a_bad_init_is_one_line_and_exit_2(
    overrides: list[str], message: str, source: Path, demo_shards: Path, tmp_path: Path, capsys
):
    out = tmp_path / "run"
    sets = tiny(demo_shards, out, *[o.format(source=source) for o in overrides])
    assert cli(["vqvae", "--config", str(DEMO_CONFIG), "--quiet", *[a for o in sets for a in ("--set", o)]]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and message in err and "Traceback" not in err, err
    assert not list_checkpoints(out / "checkpoints")


def test_a_prior_checkpoint_is_no_init(tmp_path: Path, demo_shards: Path, capsys):
    prior = save_prior(tmp_path, save_vqvae(tmp_path, 0), 0)
    sets = tiny(demo_shards, tmp_path / "run", f"init.checkpoint={prior}")
    assert cli(["vqvae", "--config", str(DEMO_CONFIG), "--quiet", *[a for o in sets for a in ("--set", o)]]) == 2
    assert "a prior checkpoint" in capsys.readouterr().err
