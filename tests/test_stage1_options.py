"""Stage 1's options for a sharper 32x32 grid (issue 13): the SSIM loss term, a wider decoder, low-dimensional
cosine codes, k-means initialisation, and finite scalar quantisation (FSQ) through the whole chain."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchmetrics.functional.image import structural_similarity_index_measure

from conftest import DEMO_CONFIG, DEMO_SRC, REPO, slices, tiny
from export.__main__ import main as export_cli
from export.runtime.onnx_models import ExportedModels
from export.runtime.prior_sampler import sample_codes
from trainer.run.config_file import ConfigError, load_config
from trainer.stage1.config import VQVAEConfig
from trainer.stage1.fsq import FiniteScalarQuantizer
from trainer.stage1.image_metrics import SSIM_SETTINGS, reconstruction_loss, ssim_per_image
from trainer.stage1.load import load_vqvae
from trainer.stage1.quantizer import VectorQuantizer
from trainer.stage1.train import train_vqvae
from trainer.stage2.config import PriorConfig
from trainer.stage2.encode import encode_splits
from trainer.stage2.train import train_prior

PRIOR_CONFIG = REPO / "configs" / "prior_demo_cpu.yaml"
DEMO_PNGS = sorted((DEMO_SRC / "keras_png_slices_test").glob("*.png"))[:4]


# --------------------------------------------------------------------------- loss


def test_ssim_loss_term_is_mse_plus_weighted_one_minus_ssim_and_has_its_own_gradient():
    images = torch.from_numpy(slices(DEMO_PNGS[:2]))
    recon = (images + 0.1 * torch.randn_like(images)).requires_grad_()
    mse = F.mse_loss(recon, images)
    ssim = structural_similarity_index_measure(recon, images, **SSIM_SETTINGS)
    assert torch.equal(reconstruction_loss(recon, images, 0.0), mse)
    torch.testing.assert_close(reconstruction_loss(recon, images, 0.3), mse + 0.3 * (1 - ssim))
    (grad_mse,) = torch.autograd.grad(reconstruction_loss(recon, images, 0.0), recon)
    (grad_ssim,) = torch.autograd.grad(reconstruction_loss(recon, images, 0.3), recon)
    (grad_of_ssim,) = torch.autograd.grad(ssim, recon)
    torch.testing.assert_close(grad_ssim - grad_mse, -0.3 * grad_of_ssim)
    assert grad_of_ssim.abs().max() > 3 * grad_mse.abs().max()  # a term that moves the optimum, not a rounding


def test_separable_ssim_equals_torchmetrics_value_and_gradient():
    images = torch.from_numpy(slices(DEMO_PNGS[:3])).double()
    recon = (images + 0.05 * torch.randn_like(images)).requires_grad_()
    per_image = structural_similarity_index_measure(recon, images, reduction="none", **SSIM_SETTINGS)
    torch.testing.assert_close(ssim_per_image(recon, images), per_image, rtol=0, atol=1e-10)
    reference = structural_similarity_index_measure(recon, images, **SSIM_SETTINGS)
    ours = ssim_per_image(recon, images).mean()
    (grad_reference,) = torch.autograd.grad(reference, recon)
    (grad_ours,) = torch.autograd.grad(ours, recon)
    torch.testing.assert_close(grad_ours, grad_reference, rtol=1e-6, atol=1e-12)


def test_ssim_weight_must_not_be_negative():
    with pytest.raises(ConfigError, match="loss.ssim_weight"):
        load_config(DEMO_CONFIG, ["loss.ssim_weight=-0.1"], cls=VQVAEConfig)


# --------------------------------------------------------------------------- codebook options


def test_default_quantizer_has_no_projection_so_old_checkpoints_load():
    keys = set(VectorQuantizer(num_codes=8, code_dim=4, compile=False).state_dict())
    assert keys == {"codebook", "ema_cluster_size", "ema_embed_sum", "restart_count", "initialized", "step"}
    low = VectorQuantizer(num_codes=8, code_dim=16, codebook_dim=4, compile=False)
    assert low.codebook.shape == (8, 4) and {"project_in.weight", "project_out.weight"} <= set(low.state_dict())


@pytest.mark.parametrize("update", ["ema", "loss"])
def test_cosine_codes_are_unit_vectors_and_the_nearest_is_the_most_similar(update):
    torch.manual_seed(0)
    q = VectorQuantizer(num_codes=16, code_dim=12, codebook_dim=4, cosine=True, update=update, compile=False)
    z = torch.randn(8, 12, 5, 5)
    for _ in range(3):
        q(z)
    q.eval()
    codes = q.codes()
    torch.testing.assert_close(codes.norm(dim=1), torch.ones(16))
    out = q(z)
    projected = F.normalize(q.project_in(z), dim=1).permute(0, 2, 3, 1).reshape(-1, 4)
    similarity = projected.double() @ codes.double().T
    chosen = similarity.gather(1, out.indices.reshape(-1, 1))[:, 0]
    torch.testing.assert_close(chosen, similarity.max(1).values)  # ties aside, argmax cosine
    assert torch.equal(q.encode_indices(z), out.indices)
    torch.testing.assert_close(q.lookup(out.indices), out.z_q)  # decoder input from indices = forward's


# --------------------------------------------------------------------------- FSQ


def test_fsq_levels_make_every_code_reachable_and_indices_round_trip():
    fsq = FiniteScalarQuantizer([8, 8, 8], code_dim=3)
    assert fsq.num_codes == 512
    with torch.no_grad():  # identity projections: the inputs are the bounded values themselves
        fsq.project_in.weight.copy_(torch.eye(3)[:, :, None, None])
        fsq.project_in.bias.zero_()
    axis = torch.linspace(-4, 4, 64)
    grid = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij")).reshape(1, 3, 64, -1)
    out = fsq(grid)
    assert out.indices.min() == 0 and out.indices.max() == 511 and len(out.indices.unique()) == 512
    assert torch.equal(fsq.encode_indices(grid), out.indices)
    torch.testing.assert_close(fsq.lookup(out.indices), out.z_q)
    share = torch.bincount(out.indices.flatten(), minlength=512).double() / out.indices.numel()
    entropy = -(share[share > 0] * share[share > 0].log()).sum()
    assert float(out.loss) == 0.0 and math.isclose(float(out.perplexity), float(entropy.exp()), rel_tol=1e-4)


def test_fsq_passes_gradients_straight_through_to_the_encoder():
    fsq = FiniteScalarQuantizer([5, 4, 3], code_dim=6)
    z = torch.randn(2, 6, 4, 4, requires_grad=True)
    fsq(z).z_q.square().sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0 and fsq.project_in.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "override, message",
    [
        ("quantizer.levels=[8, 8, 4]", "must equal the product of quantizer.levels"),
        ("quantizer.levels=[8, 1, 64]", "quantizer.levels"),
        ("quantizer.levels=[8, '8', 8]", "expected a list of int"),
        ("quantizer.kind=lfq", "quantizer.kind"),
    ],
)
def test_bad_fsq_config_is_a_clear_error(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(DEMO_CONFIG, ["quantizer.kind=fsq", "quantizer.num_codes=512", override], cls=VQVAEConfig)


def test_fsq_through_the_whole_chain(demo_shards: Path, tmp_path: Path):
    """Train an FSQ VQ-VAE, encode, train a prior on its codes, export ONNX, and sample and reconstruct
    in onnxruntime: the exported encoder and decoder agree with torch, and the sampler's codes decode."""
    fsq = ["quantizer.kind=fsq", "quantizer.levels=[4, 2, 4]", "model.downsample=16"]
    checkpoint, _ = train_vqvae(
        load_config(DEMO_CONFIG, tiny(demo_shards, tmp_path / "vqvae", *fsq), cls=VQVAEConfig), False, False
    )
    vqvae, cfg = load_vqvae(checkpoint)
    assert cfg.quantizer.kind == "fsq" and isinstance(vqvae.quantizer, FiniteScalarQuantizer)
    meta = encode_splits(checkpoint, tmp_path / "codes", batch_size=16, show_progress=False)
    assert meta["num_codes"] == 32
    prior_overrides = [
        f"codes.dir={tmp_path / 'codes'}",
        f"out_dir={tmp_path / 'prior'}",
        "model.kind=transformer",
        "model.transformer.layers=1",
        "model.transformer.width=16",
        "model.transformer.heads=2",
        "train.max_steps=4",
        "train.warmup_steps=1",
        "train.log_every=2",
        "wandb.enabled=false",
        "sample_count=2",
    ]
    prior, _ = train_prior(load_config(PRIOR_CONFIG, prior_overrides, cls=PriorConfig), show_progress=False)
    assert export_cli(["onnx", "--checkpoint", str(prior), "--out", str(tmp_path / "onnx")]) == 0

    models = ExportedModels(tmp_path / "onnx", ("encoder", "decoder"))
    images = slices(DEMO_PNGS)
    codes = models.encode(images)
    assert np.array_equal(codes, vqvae.encode(torch.from_numpy(images)).numpy())
    np.testing.assert_allclose(models.decode(codes), vqvae.decode(torch.from_numpy(codes)).numpy(), atol=1e-4)
    uniforms = np.random.default_rng(0).random((2, 16, 16))
    sampled = sample_codes(ExportedModels(tmp_path / "onnx"), uniforms, np.zeros(2, dtype=np.int64))
    assert sampled.shape == (2, 16, 16) and 0 <= sampled.min() and sampled.max() < 32
    assert models.decode(sampled).shape == (2, 1, 256, 256)
