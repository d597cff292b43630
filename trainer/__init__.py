"""Stage 1 (VQ-VAE) and stage 2 (prior) training under Accelerate; trainer/data.py loads the shards."""
