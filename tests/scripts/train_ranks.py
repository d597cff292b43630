"""Run under torchrun: train a tiny VQ-VAE, then save this rank's final state to OUT/rank<N>.pt."""

import os
import sys

import torch
from accelerate import PartialState

from trainer.config import load_config
from trainer.train_vqvae import train_vqvae

config, out = sys.argv[1], sys.argv[2]
_, model = train_vqvae(load_config(config, sys.argv[3:]), show_progress=False)
state = {k: v.cpu() for k, v in model.state_dict().items()}
state["num_processes"] = torch.tensor(PartialState().num_processes)  # proves the ranks formed one job
torch.save(state, f"{out}/rank{os.environ['RANK']}.pt")
