#!/usr/bin/env bash
# Entry point for the project's jobs. Usage: bash launch.sh COMMAND [ARGS]
#
#   demo [OUT]                 the whole chain on the embedded demo data (default OUT: runs/demo): shard,
#                              stage 1, encode, stage 2, export to ONNX, sample with onnxruntime, anomaly maps
#                              of synthetic lesions, figures
#   stage1 CONFIG [ARGS...]    train the VQ-VAE (python -m trainer vqvae --config CONFIG ARGS...)
#                              on all local GPUs, several machines, or CPU processes
#   stage2 CONFIG [ARGS...]    train the prior (python -m trainer prior --config CONFIG ARGS...)
#   all VQVAE_CONFIG PRIOR_CONFIG
#                              stage 1, then encode every split with its final checkpoint into the
#                              prior config's codes.dir, then stage 2
#
# Processes and machines come from the environment (defaults in brackets):
#   NUM_PROCESSES  processes on this machine [number of GPUs, or 1 without a GPU]
#   NUM_MACHINES [1]  MACHINE_RANK [0]  MAIN_ADDR [127.0.0.1]  MAIN_PORT [29500]
# With GPUs the job runs under `accelerate launch`; on a CPU-only machine with NUM_PROCESSES > 1
# it runs under `torchrun` (gloo), since `accelerate launch --cpu` starts only one process there.
# Several machines: run the same command on each, with its MACHINE_RANK; out_dir must be one folder
# every machine sees (a shared filesystem). A process that dies, freezes or loses its machine stops
# every other one within HEARTBEAT_TIMEOUT [30] seconds, each saying which rank and machine was lost
# (exit 1); COLLECTIVE_TIMEOUT [600] seconds bounds a collective waiting on a process alive but stuck.
# Then run every machine's command again with --resume: it continues from the newest checkpoint.
# Extra ARGS go to the trainer, e.g. --resume or --set train.max_steps=5000.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

usage() { sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; }

gpu_count() {
    python -c "import torch; print(torch.cuda.device_count())"
}

# run_distributed MODULE ARGS...: python -m MODULE ARGS... on every process of the job
run_distributed() {
    local gpus; gpus=$(gpu_count)
    local procs=${NUM_PROCESSES:-$(( gpus > 0 ? gpus : 1 ))}
    local machines=${NUM_MACHINES:-1} rank=${MACHINE_RANK:-0}
    local addr=${MAIN_ADDR:-127.0.0.1} port=${MAIN_PORT:-29500}
    if (( gpus > 0 )); then
        python -m trainer.run.launcher accelerate launch --num_processes $(( procs * machines )) \
            --num_machines "$machines" --machine_rank "$rank" --main_process_ip "$addr" --main_process_port "$port" \
            $( (( procs * machines > 1 )) && echo --multi_gpu ) -m "$@"
    elif (( procs * machines > 1 )); then
        python -m trainer.run.launcher torchrun --nproc_per_node "$procs" --nnodes "$machines" \
            --node_rank "$rank" --master_addr "$addr" --master_port "$port" -m "$@"
    else
        python -m "$@"
    fi
}

stage1() {
    local config=${1:?usage: launch.sh stage1 CONFIG [ARGS...]}; shift
    run_distributed trainer vqvae --config "$config" "$@"
}

stage2() {
    local config=${1:?usage: launch.sh stage2 CONFIG [ARGS...]}; shift
    run_distributed trainer prior --config "$config" "$@"
}

# config_value CONFIG CLASS KEY: one value of a config, as the trainer reads it. The arguments reach
# Python as sys.argv, never inside its code: a config named `x'); import os; ...` is only a file name.
config_value() {
    python - "$@" <<'PY'
import sys
from functools import reduce

from trainer.run.config_file import ConfigError, load_config
from trainer.stage1.config import VQVAEConfig
from trainer.stage2.config import PriorConfig

path, cls, key = sys.argv[1:]
try:
    loaded = load_config(path, cls={"VQVAEConfig": VQVAEConfig, "PriorConfig": PriorConfig}[cls])
except ConfigError as err:
    print(f"error: {err}", file=sys.stderr)
    sys.exit(2)
print(reduce(getattr, key.split("."), loaded))
PY
}

# holds A B: folder A is folder B or holds it. overlaps A B: either holds the other. (Absolute paths.)
holds() { [[ "$2" == "$1" || "$2" == "$1"/* ]]; }
overlaps() { holds "$1" "$2" || holds "$2" "$1"; }

# check_all_folders VQVAE_CONFIG PRIOR_CONFIG VQVAE_OUT SHARDS PRIOR_OUT CODES: the folders `all` writes must not
# collide. Checked before any work: stage 2 would refuse its out_dir, and encode its codes.dir, only after stage 1.
check_all_folders() {
    local vqvae_config=$1 prior_config=$2 vq shards prior codes problem=""
    vq=$(realpath -m -- "$3") shards=$(realpath -m -- "$4") prior=$(realpath -m -- "$5") codes=$(realpath -m -- "$6")
    if [[ "$prior" == "$vq" ]] || overlaps "$prior" "$vq/checkpoints" || overlaps "$vq" "$prior/checkpoints"; then
        problem="out_dir $5 collides with stage 1's out_dir $3 ($vqvae_config): both write checkpoints/ there"
    elif compgen -G "$prior/checkpoints/step_*" > /dev/null; then
        problem="out_dir $5 already holds checkpoints; resume it with launch.sh stage2 $prior_config --resume"
    elif holds "$codes" "$vq" || overlaps "$codes" "$vq/checkpoints"; then
        problem="codes.dir $6 collides with stage 1's out_dir $3 ($vqvae_config): encode never writes over a checkpoint"
    elif holds "$codes" "$prior" || overlaps "$codes" "$prior/checkpoints"; then
        problem="codes.dir $6 collides with the prior's out_dir $5: keep the codes and the prior's run apart"
    elif overlaps "$codes" "$shards"; then
        problem="codes.dir $6 collides with the shards $4 that stage 1 trains on ($vqvae_config)"
    fi
    if [[ -n "$problem" ]]; then
        echo "error: $prior_config: $problem" >&2
        exit 2
    fi
}

all() {
    local vqvae_config=${1:?usage: launch.sh all VQVAE_CONFIG PRIOR_CONFIG} prior_config=${2:?usage: launch.sh all VQVAE_CONFIG PRIOR_CONFIG}
    local device=cpu; (( $(gpu_count) > 0 )) && device=cuda
    local checkpoint codes   # read and checked before stage 1, so that a bad config fails in seconds, not after training
    checkpoint=$(config_value "$vqvae_config" VQVAEConfig out_dir)
    codes=$(config_value "$prior_config" PriorConfig codes.dir)
    check_all_folders "$vqvae_config" "$prior_config" "$checkpoint" "$(config_value "$vqvae_config" VQVAEConfig data.shards)" \
        "$(config_value "$prior_config" PriorConfig out_dir)" "$codes"
    stage1 "$vqvae_config"
    python -m trainer encode --checkpoint "$checkpoint" --out "$codes" --device "$device"
    stage2 "$prior_config"
}

# Stage clock of the demo: `stage TITLE` closes the running stage (printing its time) and opens the next;
# `stage_times` closes the last one and prints every stage's time and the total.
STAGE_NAMES=() STAGE_SECONDS=() STAGE_STARTED=""
now() { date +%s.%N; }
stage() {
    close_stage
    echo "== $1"
    STAGE_NAMES+=("$1") STAGE_STARTED=$(now)
}
close_stage() {
    [[ -z "$STAGE_STARTED" ]] && return 0
    local seconds; seconds=$(awk -v a="$STAGE_STARTED" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }')
    STAGE_SECONDS+=("$seconds") STAGE_STARTED=""
    echo "   ($seconds s)"
}
stage_times() {
    close_stage
    echo "== time per stage"
    local i total=0
    for i in "${!STAGE_NAMES[@]}"; do
        printf '%8.1f s  %s\n' "${STAGE_SECONDS[$i]}" "${STAGE_NAMES[$i]%%:*}"
        total=$(awk -v a="$total" -v b="${STAGE_SECONDS[$i]}" 'BEGIN { print a + b }')
    done
    printf '%8.1f s  total\n' "$total"
}

demo() {
    local out=${1:-runs/demo}
    stage "1/8 shard: the embedded demo data -> $out/shards"
    python -m data_tools shard --src data_tools/demo_data/keras_png_slices_data --out "$out/shards" \
        --samples-per-shard 16 --force --quiet
    python -m data_tools verify "$out/shards" --quiet
    python -m data_tools preview "$out/shards" --split train --count 16 --out "$out/figures/shards_preview.png"
    stage "2/8 stage 1: train the VQ-VAE (configs/vqvae_demo_cpu.yaml)"
    rm -rf "$out/vqvae" "$out/codes" "$out/prior"
    python -m trainer vqvae --config configs/vqvae_demo_cpu.yaml --set "data.shards=$out/shards" \
        --set "out_dir=$out/vqvae"
    stage "3/8 evaluate stage 1: the demo test split"
    python -m trainer evaluate --checkpoint "$out/vqvae" --split test --out "$out/figures/vqvae_test" --quiet \
        | python -c "import json,sys; s=json.load(sys.stdin); print(f\"test SSIM mean {s['ssim_mean']:.3f} (min {s['ssim_min']:.3f}), PSNR {s['psnr_mean']:.1f} dB, {s['codes_used']} of {s['num_codes']} codes used\")"
    stage "4/8 stage 2: encode every split, train the prior (configs/prior_demo_cpu.yaml)"
    python -m trainer encode --checkpoint "$out/vqvae" --out "$out/codes" --quiet
    python -m trainer prior --config configs/prior_demo_cpu.yaml --set "codes.dir=$out/codes" --set "out_dir=$out/prior"
    stage "5/8 evaluate stage 2: test bits per code, and generated vs real brains"
    python -m trainer evaluate-prior --checkpoint "$out/prior" --out "$out/figures/prior_test" --n 16 \
        --max-pairs 120 --quiet --table
    stage "6/8 export: the encoder, decoder and prior to ONNX -> $out/onnx"
    python -m export onnx --checkpoint "$out/prior" --out "$out/onnx" --force
    stage "7/8 onnxruntime only: sample 16 brains -> $out/samples, reconstruct the test split"
    python -m export sample --model-dir "$out/onnx" --n 16 --seed 0 --out "$out/samples"
    python -m export reconstruct --model-dir "$out/onnx" --shards "$out/shards" --split test \
        --out "$out/onnx_reconstruct" --quiet
    stage "8/8 anomaly maps: synthetic lesions in the test split, mapped with onnxruntime -> $out/anomaly"
    python -m data_tools lesions --images "$out/shards" --split test --out "$out/lesions" --force --quiet
    python -m export anomaly --model-dir "$out/onnx" --images "$out/lesions/images" --out "$out/anomaly" \
        --force --quiet
    stage_times
    echo "== figures in $out/figures, $out/samples/generated.png, $out/onnx_reconstruct and $out/anomaly/anomaly.png"
    ls "$out/figures" "$out/figures/vqvae_test" "$out/figures/prior_test"
}

[[ "${BASH_SOURCE[0]}" != "$0" ]] && return 0   # sourced (tests): define the functions, run nothing

case "${1:-}" in
    demo) shift; demo "$@" ;;
    stage1) shift; stage1 "$@" ;;
    stage2) shift; stage2 "$@" ;;
    all) shift; all "$@" ;;
    -h|--help|help|"") usage ;;
    *) echo "launch.sh: unknown command '$1'" >&2; usage >&2; exit 2 ;;
esac
