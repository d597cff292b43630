"""Stage 1's adversarial term as VQGAN trains it (Esser et al. 2021; taming-transformers' VQLPIPSWithDiscriminator):
the two losses, the adaptive weight, and AdversarialTraining, which holds the discriminator with its optimizer and
does their part of each micro-step, so that stage1/train.py only calls it.

From `loss.adversarial.start_step` on, each micro-step
- adds weight x lambda x L_gan to the model's loss, L_gan from the discriminator's logits on the reconstructions.
  The discriminator's weights are frozen for this forward, so its backward reaches the decoder only. lambda, VQGAN's
  adaptive weight, is ||dL_rec/dw|| / (||dL_gan/dw|| + 1e-4) at the weight w of the decoder's last layer, clamped to
  [0, 1e4] and detached: there the adversarial gradient is `weight` times the reconstruction's, whatever scale the
  two losses have (`adaptive: false` drops lambda, as MONAI's brain tutorials do);
- trains the discriminator on the real slices and the detached reconstructions, one batch through the DDP-wrapped
  discriminator, accumulated like the model's gradients; it steps with its own AdamW after the model's step,
  clipped by train.grad_clip like the model.
Before start_step neither happens (as in VQGAN, and in MONAI's tutorials with their warm-up): the autoencoder first
learns to reconstruct, and those steps cost what they cost without the term. The discriminator's initial weights
come from draws of their own, so the model's draws, and its weights up to start_step, are a run's without the term.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainer.run.training_run import Companion, TrainingRun
from trainer.stage1.config import AdversarialConfig
from trainer.stage1.discriminator import PatchDiscriminator

# What each micro-step adds to the run's window of metrics: whether the term ran (1 or 0), then the means reported,
# each over the micro-steps that ran (a window may begin before start_step): L_gan, the discriminator's loss, its
# mean logits on real slices and on reconstructions, and L_gan's weight in the model's loss (weight x lambda).
METRICS = ("gen_adv_loss", "disc_loss", "disc_logits_real", "disc_logits_fake", "adv_weight")
WINDOW = ("adversarial_ran", *METRICS)


def discriminator_loss(kind: str, real: Tensor, fake: Tensor) -> Tensor:
    """VQGAN's, from the logits of real and reconstructed slices: hinge 0.5 (mean relu(1 - real) + mean relu(1 +
    fake)), which stops pushing a logit past the margin; non_saturating 0.5 (mean softplus(-real) + mean
    softplus(fake)), the logistic loss of telling real (logit > 0) from reconstructed."""
    if kind == "hinge":
        return 0.5 * (F.relu(1 - real).mean() + F.relu(1 + fake).mean())
    return 0.5 * (F.softplus(-real).mean() + F.softplus(fake).mean())


def generator_loss(kind: str, fake: Tensor) -> Tensor:
    """L_gan from the logits of the reconstructions: hinge -mean(fake) (VQGAN's); non_saturating mean
    softplus(-fake) = -log sigmoid(fake) (Goodfellow et al. 2014), whose gradient stays large while the
    discriminator still rejects the reconstructions."""
    if kind == "hinge":
        return -fake.mean()
    return F.softplus(-fake).mean()


def adaptive_weight(rec_loss: Tensor, gan_loss: Tensor, last_layer_weight: Tensor) -> Tensor:
    """VQGAN's lambda = ||dL_rec/dw|| / (||dL_gan/dw|| + 1e-4), clamped to [0, 1e4] and detached. The norms are
    taken in float32 (under bf16 autocast too); the graphs are kept for the backward that follows."""
    (rec,) = torch.autograd.grad(rec_loss, last_layer_weight, retain_graph=True)
    (gan,) = torch.autograd.grad(gan_loss, last_layer_weight, retain_graph=True)
    return (rec.float().norm() / (gan.float().norm() + 1e-4)).clamp(0, 1e4).detach()


class AdversarialTraining:
    """The discriminator of one stage-1 run, its optimizer, and their part of each micro-step. `companion` goes to
    TrainingRun.start, which restores, compiles, wraps and saves the discriminator with the model."""

    def __init__(self, cfg: AdversarialConfig, last_decoder_layer: nn.Module, seed: int, run: TrainingRun):
        self.cfg, self.last_layer, self.run = cfg, last_decoder_layer, run
        if cfg.adaptive and run.train.compile:
            # The adaptive weight back-propagates through the compiled model's graph before its own backward does
            # (retain_graph): torch.compile's backward refuses that when it donates its buffers to save memory.
            torch._functorch.config.donated_buffer = False
        with torch.random.fork_rng(devices=[]):  # draws of its own: the model's stay those of a run without it
            torch.manual_seed(seed)
            discriminator = PatchDiscriminator(cfg.channels, cfg.layers)
        optimizer = torch.optim.AdamW(discriminator.parameters(), lr=cfg.lr, betas=(0.5, 0.9), weight_decay=0.0)
        self.companion = Companion(
            "discriminator", discriminator, optimizer, built_by="loss.adversarial.channels and layers"
        )
        self.generator_values: tuple[Tensor, Tensor] | None = None  # L_gan, weight x lambda
        self.discriminator_values: tuple[Tensor, Tensor, Tensor] | None = None  # its loss, mean logits real, fake

    def active(self, step: int) -> bool:
        return step >= self.cfg.start_step

    def generator_term(self, recon: Tensor, recon_loss: Tensor) -> Tensor:
        """weight x lambda x L_gan for this micro-step's reconstructions, to add to the model's loss."""
        # The module without its DDP wrapper: this forward has no backward into the discriminator's weights.
        frozen = self.companion.compiled.requires_grad_(False)
        with self.run.accelerator.autocast():
            gan = generator_loss(self.cfg.kind, frozen(recon).float())
        frozen.requires_grad_(True)
        weight = torch.full_like(gan, self.cfg.weight)  # on the device without a copy from the host
        if self.cfg.adaptive:
            weight = weight * adaptive_weight(recon_loss, gan, self.last_layer.weight)
        self.generator_values = (gan.detach(), weight)
        return weight * gan

    def backward_discriminator(self, images: Tensor, recon: Tensor) -> None:
        """The discriminator's loss on the real slices and the detached reconstructions, back-propagated
        (inside the loop's `accelerator.accumulate`, so accumulated and all-reduced like the model's)."""
        real, fake = self.companion.wrapped(torch.cat([images, recon.detach()])).float().chunk(2)
        loss = discriminator_loss(self.cfg.kind, real, fake)
        self.run.accelerator.backward(loss)
        self.discriminator_values = (loss.detach(), real.mean().detach(), fake.mean().detach())

    def window_values(self, step: int) -> Tensor:
        """This micro-step's WINDOW, for TrainingRun.add_metrics: zeros before start_step."""
        device = self.run.accelerator.device
        if not self.active(step):
            return torch.zeros(len(WINDOW), device=device)
        gan, weight = self.generator_values
        return torch.stack([torch.ones((), device=device), gan, *self.discriminator_values, weight])

    def optimizer_step(self) -> None:
        """After the model's step: clip (train.grad_clip), step and clear the discriminator's gradients."""
        self.run.clip_and_step(self.companion.module.parameters(), self.companion.optimizer)

    @staticmethod
    def report(means: list[float]) -> dict[str, float]:
        """The window's means of WINDOW as METRICS over the micro-steps the term ran in; none before start_step."""
        ran = means[0]
        return {name: mean / ran for name, mean in zip(METRICS, means[1:])} if ran else {}
