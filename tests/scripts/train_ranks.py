"""Run under torchrun: train a tiny model of either stage, then save this rank's final state to OUT/rank<N>.pt.

train_ranks.py vqvae|prior CONFIG OUT [SECTION.KEY=VALUE ...]
"""

import os
import sys

import torch
from accelerate import PartialState

from trainer.run.config_file import load_config
from trainer.stage1.config import VQVAEConfig
from trainer.stage1.train import train_vqvae
from trainer.stage2.config import PriorConfig
from trainer.stage2.train import train_prior

stage, config, out = sys.argv[1:4]
train, cls = {"vqvae": (train_vqvae, VQVAEConfig), "prior": (train_prior, PriorConfig)}[stage]
_, model = train(load_config(config, sys.argv[4:], cls=cls), show_progress=False)
state = {k: v.cpu() for k, v in model.state_dict().items()}
state["num_processes"] = torch.tensor(PartialState().num_processes)  # proves the ranks formed one job
torch.save(state, f"{out}/rank{os.environ['RANK']}.pt")
