"""Both training stages under Accelerate, one folder per stage along the data flow:

    run/     what both stages share: configs read from YAML, checkpoints, the training run around each loop
             (Accelerator, metrics log, LR schedule, wandb, launcher), the training options
    stage1/  shards -> the VQ-VAE: data loading, the model and its quantizers, training, evaluation
    stage2/  codes -> the prior: encoding the shards into code grids, the prior contract, the PixelCNN and
             transformer priors, training, sampling, evaluation of generated brains

stage2 imports stage1 (it needs the VQ-VAE), never the reverse; tests/test_layout.py checks it.
"""
