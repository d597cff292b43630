"""Run under torchrun: train a tiny model of either stage, then save this rank's final state to OUT/rank<N>.pt
(with stage 1's adversarial term, its discriminator's too, under `discriminator.`).

train_ranks.py vqvae|prior CONFIG OUT [SECTION.KEY=VALUE ...]
"""

import os
import sys

import torch
from accelerate import PartialState

import trainer.stage1.train as stage1_train
from trainer.run.config_file import load_config
from trainer.stage1.config import VQVAEConfig
from trainer.stage2.config import PriorConfig
from trainer.stage2.train import train_prior

discriminators = []  # the one a stage-1 run with the adversarial term builds: the run does not return it


class RecordedAdversarialTraining(stage1_train.AdversarialTraining):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        discriminators.append(self.companion.module)


stage1_train.AdversarialTraining = RecordedAdversarialTraining
stage, config, out = sys.argv[1:4]
train, cls = {"vqvae": (stage1_train.train_vqvae, VQVAEConfig), "prior": (train_prior, PriorConfig)}[stage]
_, model = train(load_config(config, sys.argv[4:], cls=cls), show_progress=False)
state = {k: v.cpu() for k, v in model.state_dict().items()}
for discriminator in discriminators:
    state.update({f"discriminator.{k}": v.cpu() for k, v in discriminator.state_dict().items()})
state["num_processes"] = torch.tensor(PartialState().num_processes)  # proves the ranks formed one job
torch.save(state, f"{out}/rank{os.environ['RANK']}.pt")
