"""What both training stages share; nothing here knows which stage it serves.

config_file     strict YAML configs: unknown keys and wrong types refused, `--set` overrides
train_config    the config sections both stages have: optimisation schedule, wandb
checkpoint      checkpoint folders: atomic writes, safetensors weights, which are good, resolving a run folder
training_run    TrainingRun: the Accelerator, resuming, the metrics window, divergence stop, saving
metrics_file    the metrics log (metrics.jsonl) read back
lr_schedule     warm-up, then cosine decay
wandb_logging   wandb, offline by default, for training and one-shot commands
launcher        which launcher started the process and how many processes it asked for
options         the command-line options every training command shares
"""
