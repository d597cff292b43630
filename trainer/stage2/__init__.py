"""Stage 2: codes -> an autoregressive prior over the code grid that samples new brains and scores codes.

encode              `python -m trainer encode`: every split through a frozen VQ-VAE into code grids
codes               the code files ({split}.npz, codes.json) and loading them
config              the stage-2 config (prior model, codes) of configs/prior_*.yaml
prior_contract      what every prior honours: grid shape, condition checks, the torch draw rule
pixelcnn            the gated PixelCNN prior and its exact fast sampler
transformer_prior   the transformer prior and its key/value-cached sampler
load                building a prior from a config, loading one and its paired VQ-VAE
prior_loss          loss, bits per code and accuracy of a prior on code grids
train               `python -m trainer prior`: the training loop
generate            brains from a prior with PyTorch: sample code grids, decode them
sample              `python -m trainer sample`
generation_metrics  how real generated brains are: Frechet distances, MS-SSIM, nearest training slices
structure_metrics   their structure: one component, symmetry, edge contact
evaluate            `python -m trainer evaluate-prior`: test bits per code and generated vs real
healthy_nll         the anomaly maps' healthy thresholds: NLL quantiles of the validation codes
anomaly             `python -m trainer anomaly`: anomaly maps, the prior healing what it finds unlikely
"""
