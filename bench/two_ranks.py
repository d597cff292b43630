"""Run under torchrun by bench/gpu.py (part two_process): stage 1 in N processes sharing the devices there
are, over gloo, so that the distributed code runs on CUDA tensors even on a one-GPU machine.

    torchrun --nproc_per_node 2 bench/two_ranks.py CONFIG OUT [SECTION.KEY=VALUE ...]

Each rank writes OUT/rank<N>.json: its device, backend, world size and a digest of its final weights
(DDP and the quantizer's all-reduces must keep them identical).
"""

import hashlib
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainer.run.config_file import load_config
from trainer.stage1.config import VQVAEConfig
from trainer.stage1.train import train_vqvae

config, out, overrides = sys.argv[1], Path(sys.argv[2]), sys.argv[3:]
# gloo, not NCCL: NCCL refuses two ranks on one GPU. Accelerate keeps a process group that exists.
dist.init_process_group("gloo")
rank, world_size = dist.get_rank(), dist.get_world_size()  # the run's end destroys the group
if torch.cuda.is_available() and torch.cuda.device_count() < world_size:
    # Accelerate would hand DDP device_ids=[local rank], a GPU that does not exist; without device_ids
    # DDP uses the module's device, cuda:(local rank % GPUs) as Accelerate chose it.
    os.environ["ACCELERATE_BYPASS_DEVICE_MAP"] = "true"
_, model = train_vqvae(load_config(config, overrides, cls=VQVAEConfig), show_progress=False)
digest = hashlib.sha256()
for name, tensor in sorted(model.state_dict().items()):
    digest.update(name.encode() + tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
record = {
    "rank": rank,
    "world_size": world_size,
    "backend": "gloo",
    "device": str(next(model.parameters()).device),
    "weights_sha256": digest.hexdigest(),
    "codebook_restarts": int(model.quantizer.restart_count),
}
(out / f"rank{rank}.json").write_text(json.dumps(record))
