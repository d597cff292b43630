#!/usr/bin/env bash
# Entry point for the project's jobs. Usage: bash launch.sh COMMAND [ARGS]
#
#   demo [OUT]                 the whole chain on the embedded demo data (default OUT: runs/demo):
#                              shard + verify, train the VQ-VAE, evaluate it, write the figures
#   stage1 CONFIG [ARGS...]    train the VQ-VAE (python -m trainer vqvae --config CONFIG ARGS...)
#                              on all local GPUs, several machines, or CPU processes
#
# Processes and machines come from the environment (defaults in brackets):
#   NUM_PROCESSES  processes on this machine [number of GPUs, or 1 without a GPU]
#   NUM_MACHINES [1]  MACHINE_RANK [0]  MAIN_ADDR [127.0.0.1]  MAIN_PORT [29500]
# With GPUs the job runs under `accelerate launch`; on a CPU-only machine with NUM_PROCESSES > 1
# it runs under `torchrun` (gloo), since `accelerate launch --cpu` starts only one process there.
# Extra ARGS go to the trainer, e.g. --resume or --set train.max_steps=5000.
set -euo pipefail
cd "$(dirname "$0")"

usage() { sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; }

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
        accelerate launch --num_processes $(( procs * machines )) --num_machines "$machines" \
            --machine_rank "$rank" --main_process_ip "$addr" --main_process_port "$port" \
            $( (( procs * machines > 1 )) && echo --multi_gpu ) -m "$@"
    elif (( procs * machines > 1 )); then
        torchrun --nproc_per_node "$procs" --nnodes "$machines" --node_rank "$rank" \
            --master_addr "$addr" --master_port "$port" -m "$@"
    else
        python -m "$@"
    fi
}

stage1() {
    local config=${1:?usage: launch.sh stage1 CONFIG [ARGS...]}; shift
    run_distributed trainer vqvae --config "$config" "$@"
}

demo() {
    local out=${1:-runs/demo}
    echo "== 1/4 shard the embedded demo data -> $out/shards"
    python -m data_tools shard --src data_tools/demo_data/keras_png_slices_data --out "$out/shards" \
        --samples-per-shard 16 --force --quiet
    python -m data_tools verify "$out/shards" --quiet
    python -m data_tools preview "$out/shards" --split train --count 16 --out "$out/figures/shards_preview.png"
    echo "== 2/4 stage 1: train the VQ-VAE (configs/vqvae_demo_cpu.yaml)"
    rm -rf "$out/vqvae"
    python -m trainer vqvae --config configs/vqvae_demo_cpu.yaml --set "data.shards=$out/shards" \
        --set "out_dir=$out/vqvae"
    echo "== 3/4 evaluate on the demo test split"
    python -m trainer evaluate --checkpoint "$out/vqvae" --split test --out "$out/figures/vqvae_test" --quiet \
        | python -c "import json,sys; s=json.load(sys.stdin); print(f\"test SSIM mean {s['ssim_mean']:.3f} (min {s['ssim_min']:.3f}), PSNR {s['psnr_mean']:.1f} dB, {s['codes_used']} of {s['num_codes']} codes used\")"
    echo "== 4/4 figures in $out/figures"
    ls "$out/figures" "$out/figures/vqvae_test"
}

case "${1:-}" in
    demo) shift; demo "$@" ;;
    stage1) shift; stage1 "$@" ;;
    -h|--help|help|"") usage ;;
    *) echo "launch.sh: unknown command '$1'" >&2; usage >&2; exit 2 ;;
esac
