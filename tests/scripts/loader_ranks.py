"""Run under torchrun: each rank records the keys it loads, per epoch, to OUT/rank<N>.json."""

import json
import sys

from accelerate import Accelerator

from trainer.stage1.data import SliceShards, epoch_batches, train_batches

shard_dir, out = sys.argv[1], sys.argv[2]
accelerator = Accelerator(cpu=True)
dataset = SliceShards(
    shard_dir,
    "train",
    rank=accelerator.process_index,
    world_size=accelerator.num_processes,
    shuffle=True,
    seed=7,
    shuffle_buffer=8,
)
record = {
    "epochs": [[k for b in epoch_batches(dataset, 5, epoch=e, num_workers=2) for k in b.keys] for e in (0, 1)],
    "len": len(dataset),
}
stream = train_batches(dataset, 8, num_workers=2)
record["train"] = [next(stream).keys for _ in range(10)]  # 80 samples: one epoch and a bit
with open(f"{out}/rank{accelerator.process_index}.json", "w") as f:
    json.dump(record, f)
accelerator.wait_for_everyone()
