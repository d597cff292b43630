"""One of two gloo processes that watch each other (trainer/run/peers.py) while they all-reduce, started by the
test with RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT set (rank 0 hosts the store, as torchrun's agent does).

peer_ranks.py freeze|finish
    freeze: rank 1 stops itself (SIGSTOP: a machine gone from the network, nothing closes its connections)
            after 3 all-reduces; rank 0 is then blocked in its next all-reduce.
    finish: both stop their watch after 3 all-reduces; rank 1 exits, rank 0 waits past the heartbeat timeout
            and prints "done": a process that ended normally is not lost.
"""

import os
import signal
import sys
import time
from datetime import timedelta

import torch
import torch.distributed as dist

from trainer.run.peers import timeouts, watch_peers

mode, rank = sys.argv[1], int(os.environ["RANK"])
collective_timeout, heartbeat_timeout = timeouts()
dist.init_process_group("gloo", timeout=timedelta(seconds=collective_timeout))
watch = watch_peers(rank, 2, heartbeat_timeout, "nowhere")
for step in range(1000):
    if step == 3 and mode == "finish":
        watch.stop()
        if rank == 0:
            time.sleep(heartbeat_timeout + 2)
            print("done", flush=True)
        sys.exit(0)
    if step == 3 and rank == 1:
        os.kill(os.getpid(), signal.SIGSTOP)
    dist.all_reduce(torch.ones(4))
    time.sleep(0.1)
