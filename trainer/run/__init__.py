"""What both training stages share; nothing here knows which stage it serves.

config_file     strict YAML configs: unknown keys and wrong types refused, `--set` overrides
train_config    the config sections both stages have: optimisation schedule, wandb
checkpoint      checkpoint folders: atomic writes, safetensors weights, which are good, resolving a run folder
training_run    TrainingRun: the Accelerator, resuming, the metrics window, divergence stop, saving; a Companion
                module trained beside the model (stage 1's discriminator) is resumed and saved with it
resume_check    what a resumed run must share with its checkpoint: the model its config builds, its facts
metrics_file    the metrics log (metrics.jsonl) read back
lr_schedule     warm-up, then cosine decay
wandb_logging   wandb, offline by default, for training and one-shot commands
launcher        which launcher started the process and how many processes it asked for; launch.sh runs the
                launchers through it, so a failed process ends in its exit code, not a launcher's traceback
peers           the processes of a job watch each other's heartbeat: a lost one stops the rest, named
options         the command-line options every training command shares
"""
