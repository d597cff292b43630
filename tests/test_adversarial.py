"""Stage 1's adversarial term (VQGAN): the losses on known logits, the adaptive weight against gradient norms taken
by hand, the PatchGAN discriminator, the config checks, and the term in the training loop: its metrics, the
discriminator saved beside the model (and left alone by evaluate), the model untouched before start_step, resuming,
the NaN stop and two ranks. The exact resume with the term is in test_train_vqvae.py."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from contextlib import nullcontext
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import trainer.stage1.adversarial as adversarial_module
from conftest import DEMO_CONFIG, REPO, free_port, tiny
from trainer.__main__ import main as cli
from trainer.run.checkpoint import list_checkpoints, load_training_state, load_weights
from trainer.run.config_file import load_config
from trainer.run.training_run import TrainingDiverged
from trainer.stage1.adversarial import (
    METRICS,
    AdversarialTraining,
    adaptive_weight,
    discriminator_loss,
    generator_loss,
)
from trainer.stage1.config import AdversarialConfig, ModelConfig, QuantizerConfig, VQVAEConfig
from trainer.stage1.discriminator import PatchDiscriminator
from trainer.stage1.evaluate import evaluate
from trainer.stage1.image_metrics import reconstruction_loss
from trainer.stage1.train import train_vqvae
from trainer.stage1.vqvae import VQVAE
from wandb_log import history

# A small discriminator (widths 8, 16, 32; 62x62 logits on a slice) that trains from step 4 on.
ADVERSARIAL = [
    "loss.adversarial.weight=0.5",
    "loss.adversarial.channels=8",
    "loss.adversarial.layers=2",
    "loss.adversarial.start_step=4",
]


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


# --------------------------------------------------------------------------- the losses and the weight


def test_hinge_and_non_saturating_losses_on_known_logits():
    real, fake = torch.tensor([2.0, 0.5, -1.0]), torch.tensor([-2.0, 0.0, 1.5])
    # hinge: real relu(1 - r) = 0, 0.5, 2 (mean 5/6); fake relu(1 + f) = 0, 1, 2.5 (mean 7/6); half their sum: 1
    assert discriminator_loss("hinge", real, fake).item() == pytest.approx(1.0)
    assert generator_loss("hinge", fake).item() == pytest.approx(-(-2.0 + 0.0 + 1.5) / 3)
    expected = 0.5 * (sum(softplus(-r) for r in real.tolist()) / 3 + sum(softplus(f) for f in fake.tolist()) / 3)
    assert discriminator_loss("non_saturating", real, fake).item() == pytest.approx(expected)
    expected = sum(-math.log(1 / (1 + math.exp(-f))) for f in fake.tolist()) / 3  # -log sigmoid(fake)
    assert generator_loss("non_saturating", fake).item() == pytest.approx(expected)
    # a discriminator sure of both is not pushed further by the hinge, and nearly so by the logistic loss
    sure_real, sure_fake = torch.full((4,), 5.0), torch.full((4,), -5.0)
    assert discriminator_loss("hinge", sure_real, sure_fake).item() == 0
    assert 0 < discriminator_loss("non_saturating", sure_real, sure_fake).item() < 0.01


def test_adaptive_weight_is_the_ratio_of_the_gradient_norms_computed_by_hand():
    """A linear last layer out = w x: dL/dw = dL/dout x^T, so both gradients are known in closed form."""
    w = torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, 1.0]], requires_grad=True)
    x, target, v = torch.tensor([1.0, 2.0, -1.0]), torch.tensor([0.5, -1.0]), torch.tensor([0.3, -0.7])
    out = w @ x
    rec, gan = ((out - target) ** 2).sum(), -(v * out).sum()
    rec_grad = torch.outer(2 * (out.detach() - target), x)
    gan_grad = torch.outer(-v, x)
    expected = rec_grad.norm() / (gan_grad.norm() + 1e-4)
    weight = adaptive_weight(rec, gan, w)
    assert weight.item() == pytest.approx(expected.item(), rel=1e-6) and not weight.requires_grad
    assert w.grad is None  # it only looked: the run's backward still comes
    rec.backward()  # the graph was kept for it
    torch.testing.assert_close(w.grad, rec_grad)
    # an adversarial loss with no gradient at the layer: the ratio is clamped to 1e4
    assert adaptive_weight((w * 1e3).sum(), (w * 0).sum(), w).item() == 1e4


def tiny_adversarial(cfg: AdversarialConfig, model: VQVAE) -> AdversarialTraining:
    """The term outside a run: a stand-in for TrainingRun with what the term uses of it before the loop."""
    run = SimpleNamespace(train=SimpleNamespace(compile=False), accelerator=SimpleNamespace(autocast=nullcontext))
    term = AdversarialTraining(cfg, model.last_decoder_layer(), seed=0, run=run)
    term.companion.compiled = term.companion.module  # as TrainingRun.start leaves it without compile
    return term


def test_generator_term_weighs_the_gan_loss_by_the_gradient_ratio_at_the_last_decoder_layer():
    torch.manual_seed(0)
    model = VQVAE(
        ModelConfig(downsample=8, channels=16, res_blocks=1, res_channels=8, code_dim=8),
        QuantizerConfig(num_codes=32, compile=False),
    )
    cfg = AdversarialConfig(weight=0.3, channels=4, layers=2)
    term = tiny_adversarial(cfg, model)
    images = torch.rand(2, 1, 256, 256)
    recon, _ = model(images)
    recon_loss = reconstruction_loss(recon, images, 0.1)
    added = term.generator_term(recon, recon_loss)
    layer = model.last_decoder_layer()
    assert isinstance(layer, nn.ConvTranspose2d) and layer.out_channels == 1 and layer is model.decoder.net[-1]

    added.backward(retain_graph=True)  # reaches the decoder, never the discriminator: it learns from its own loss
    assert layer.weight.grad.abs().sum() > 0
    assert all(p.grad is None and p.requires_grad for p in term.companion.module.parameters())

    def grad_norm(loss: torch.Tensor) -> float:  # the slow way: a whole backward, then the layer's .grad
        model.zero_grad()
        loss.backward(retain_graph=True)
        return layer.weight.grad.norm().item()

    gan = generator_loss("hinge", term.companion.module(recon))
    weight = 0.3 * grad_norm(recon_loss) / (grad_norm(gan) + 1e-4)
    assert added.item() == pytest.approx(weight * gan.item(), rel=1e-5)
    assert term.generator_values[1].item() == pytest.approx(weight, rel=1e-5)
    term.cfg = AdversarialConfig(weight=0.3, adaptive=False)
    assert term.generator_term(recon, recon_loss).item() == pytest.approx(0.3 * gan.item(), rel=1e-5)


def test_under_bf16_autocast_the_adaptive_weight_is_float32_and_near_the_float32_one():
    torch.manual_seed(0)
    model = VQVAE(
        ModelConfig(downsample=8, channels=16, res_blocks=1, res_channels=8, code_dim=8),
        QuantizerConfig(num_codes=32, compile=False),
    ).eval()  # the codebook stays put between the two passes
    term = tiny_adversarial(AdversarialConfig(weight=1.0, channels=4, layers=2), model)
    images = torch.rand(2, 1, 256, 256)
    weights = []
    for autocast in (nullcontext, lambda: torch.autocast("cpu", dtype=torch.bfloat16)):
        term.run.accelerator.autocast = autocast
        with autocast():
            recon, _ = model(images)
        term.generator_term(recon, reconstruction_loss(recon, images))
        weights.append(term.generator_values[1])
    assert weights[1].dtype == torch.float32 and weights[0].item() == pytest.approx(weights[1].item(), rel=0.05)
    assert weights[0].item() != weights[1].item()  # bf16 did run


def test_patch_discriminator_judges_each_slice_alone_on_a_grid_of_patches():
    torch.manual_seed(0)
    images = torch.rand(3, 1, 256, 256)
    for layers in (1, 2, 3):
        side = 256 // 2**layers - 2
        assert PatchDiscriminator(4, layers)(images).shape == (3, 1, side, side)
    discriminator = PatchDiscriminator(8, 3)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in discriminator.modules())
    # GroupNorm: a slice's logits do not depend on what else is in the batch (BatchNorm's would)
    torch.testing.assert_close(discriminator(images)[:1], discriminator(images[:1]), rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- the config


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["loss.adversarial.weight=-0.1"], "loss.adversarial.weight: must be >= 0"),
        (["loss.adversarial.start_step=-1"], "loss.adversarial.start_step: must be >= 0"),
        (["loss.adversarial.lr=0"], "loss.adversarial.lr: must be > 0"),
        (["loss.adversarial.lr=.inf"], "loss.adversarial.lr: must be a finite number"),
        (["loss.adversarial.lr=.nan"], "loss.adversarial.lr: must be a finite number"),
        (["loss.adversarial.kind=wgan"], "loss.adversarial.kind: must be hinge or non_saturating"),
        (["loss.adversarial.channels=0"], "loss.adversarial.channels: must be >= 1"),
        (["loss.adversarial.channels=100000"], "loss.adversarial.channels: must be an integer from 1 to 1024"),
        (["loss.adversarial.layers=0"], "loss.adversarial.layers: must be >= 1"),
        (["loss.adversarial.layers=7"], "loss.adversarial.layers: must be an integer from 1 to 6"),
        (["loss.adversarial.adaptive=maybe"], "loss.adversarial.adaptive: expected bool"),
        (
            ["loss.adversarial.weight=0.1", "train.mixed_precision=fp16"],
            "loss.adversarial.weight: the adversarial term does not train under train.mixed_precision fp16",
        ),
    ],
)
def test_a_bad_adversarial_value_is_one_line_and_exit_2(overrides: list[str], message: str, capsys):
    args = ["vqvae", "--config", str(DEMO_CONFIG), "--quiet"]
    assert cli(args + [a for o in overrides for a in ("--set", o)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and message in err and str(DEMO_CONFIG) in err, err


def test_the_term_is_off_by_default_and_fp16_is_fine_without_it():
    cfg = load_config(DEMO_CONFIG, ["train.mixed_precision=fp16"], cls=VQVAEConfig)
    assert cfg.loss.adversarial.weight == 0


# --------------------------------------------------------------------------- in the training loop


def test_a_run_with_the_term_logs_it_trains_the_discriminator_and_leaves_the_model_alone_until_it_starts(
    demo_shards: Path, tmp_path: Path, monkeypatch
):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    steps = ["train.max_steps=8", "train.checkpoint_every=4", "train.keep_checkpoints=3", "train.eval_every=8"]
    out = tmp_path / "adversarial"
    cfg = load_config(DEMO_CONFIG, tiny(demo_shards, out, *steps, *ADVERSARIAL, "wandb.enabled=true"), cls=VQVAEConfig)
    train_vqvae(cfg, show_progress=False)
    plain = tmp_path / "plain"
    train_vqvae(load_config(DEMO_CONFIG, tiny(demo_shards, plain, *steps), cls=VQVAEConfig), show_progress=False)

    rows = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4, 6, 8]
    assert not any(name in r for r in rows[:2] for name in METRICS)  # steps 1 to 4: the term has not started
    for row in rows[2:]:
        assert all(math.isfinite(row[name]) for name in METRICS), row
        assert row["adv_weight"] > 0 and row["disc_loss"] > 0
        # the hinge generator loss is minus the mean logit on reconstructions
        assert row["gen_adv_loss"] == pytest.approx(-row["disc_logits_fake"], rel=1e-5)
    logged = {r["_step"]: r for r in history(out) if "disc_loss" in r}
    assert list(logged) == [6, 8]
    assert all(logged[6][name] == pytest.approx(rows[2][name]) for name in METRICS)

    four, eight = list_checkpoints(out / "checkpoints")[-2:]
    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed)
        initial = PatchDiscriminator(8, 2).state_dict()
    assert all(torch.equal(initial[k], v) for k, v in load_weights(four, "discriminator").items())
    trained = load_weights(eight, "discriminator")
    assert not all(torch.equal(initial[k], trained[k]) for k in initial)
    assert set(load_training_state(eight)["companions"]) == {"discriminator"}
    # The model's first 4 steps, and so its draws, are those of the run without the term: the same weights.
    plain_four = load_weights(plain / "checkpoints" / "step_0000004")
    assert all(torch.equal(plain_four[k], v) for k, v in load_weights(four).items())
    assert not (plain / "checkpoints" / "step_0000004" / "discriminator.safetensors").exists()
    # evaluate (as encode and export, through load_vqvae) reads the VQ-VAE alone
    summary = evaluate(out, "test", tmp_path / "eval", show_progress=False)
    assert summary["images"] > 0 and math.isfinite(summary["ssim_mean"])


def test_resume_starts_a_discriminator_the_checkpoint_lacks_and_refuses_one_of_another_shape(
    demo_shards: Path, tmp_path: Path, capsys
):
    out = tmp_path / "run"
    steps = ["train.checkpoint_every=4", "train.eval_every=100"]
    off = tiny(demo_shards, out, *steps, "train.max_steps=4")
    train_vqvae(load_config(DEMO_CONFIG, off, cls=VQVAEConfig), show_progress=False)
    on = [*steps, *ADVERSARIAL, "loss.adversarial.start_step=0", "train.max_steps=6"]
    cfg = load_config(DEMO_CONFIG, tiny(demo_shards, out, *on), cls=VQVAEConfig)
    train_vqvae(cfg, resume=True, show_progress=False)
    said = capsys.readouterr().out
    assert "step_0000004 holds no discriminator: it starts untrained" in said
    assert "--resume with changed loss.adversarial" in said
    assert (list_checkpoints(out / "checkpoints")[-1] / "discriminator.safetensors").is_file()

    wider = tiny(demo_shards, out, *on, "loss.adversarial.channels=16", "train.max_steps=8")
    args = ["vqvae", "--config", str(DEMO_CONFIG), "--quiet", "--resume", *[a for o in wider for a in ("--set", o)]]
    assert cli(args) == 2
    said = capsys.readouterr()
    err = said.err.strip()
    assert len(err.splitlines()) == 1 and "step_0000006/discriminator.safetensors: a discriminator of another" in err
    assert "loss.adversarial.channels and layers" in err
    assert "cannot resume" not in said.out  # the checkpoint is not called broken


def test_a_non_finite_discriminator_loss_stops_the_run(demo_shards: Path, tmp_path: Path, monkeypatch):
    real_loss, calls = adversarial_module.discriminator_loss, []

    def poisoned(kind, real, fake):
        calls.append(1)
        loss = real_loss(kind, real, fake)
        return loss * float("nan") if len(calls) == 4 else loss  # step 4's: its window is the model's still

    monkeypatch.setattr(adversarial_module, "discriminator_loss", poisoned)
    overrides = tiny(demo_shards, tmp_path / "run", *ADVERSARIAL, "loss.adversarial.start_step=0")
    with pytest.raises(TrainingDiverged, match=r"^disc_loss became nan by step 4; stopping"):
        train_vqvae(load_config(DEMO_CONFIG, overrides, cls=VQVAEConfig), show_progress=False)


def test_two_ranks_keep_one_model_and_one_discriminator(demo_shards: Path, tmp_path: Path):
    """DDP over gloo with gradient accumulation: the model and the discriminator agree on both ranks bit for bit."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(free_port()),
        str(REPO / "tests" / "scripts" / "train_ranks.py"),
        "vqvae",
        str(DEMO_CONFIG),
        str(tmp_path),
        *tiny(
            demo_shards,
            tmp_path / "run",
            *ADVERSARIAL,
            "loss.adversarial.start_step=2",
            "train.grad_accum=2",
            "train.max_steps=6",
            "train.eval_every=6",
        ),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert int(rank0["num_processes"]) == 2
    assert any(k.startswith("discriminator.") for k in rank0)
    assert [k for k in rank0 if not torch.equal(rank0[k], rank1[k])] == []
    rows = [json.loads(r) for r in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r["disc_loss"]) for r in rows[1:])
