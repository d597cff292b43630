"""Stage 1: shards -> a VQ-VAE that turns a 256x256 slice into a grid of codebook indices and back.

config          the stage-1 config (model, quantizer, loss, data) of configs/vqvae_*.yaml
data            shards (or a split held in memory) as batches for training and evaluation
vqvae           the encoder, decoder and their quantizer
quantizer       the EMA codebook and its fused nearest-code search
fsq             finite scalar quantization, the codebook-free alternative
image_metrics   SSIM/PSNR and the reconstruction loss
discriminator   the PatchGAN discriminator of the adversarial term
adversarial     VQGAN's adversarial term: its losses, the adaptive weight, the discriminator's part of a step
load            building a VQ-VAE from a config, loading one from a checkpoint; decoding numpy codes
realism         how alike two image sets are: a classifier two-sample test, and the Frechet distance
train           `python -m trainer vqvae`: the training loop
evaluate        `python -m trainer evaluate`: SSIM/PSNR, codebook usage and figures on a split
"""
