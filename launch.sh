#!/usr/bin/env bash
# Entry point for the project's jobs. Usage: bash launch.sh COMMAND [options]
#
#   demo [OUT]   the whole chain on the embedded demo data (default OUT: runs/demo):
#                shard the Colin27 demo slices, verify the shards, write a preview sheet.
#
# Run it inside the environment the README sets up.
set -euo pipefail
cd "$(dirname "$0")"

usage() { sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; }

demo() {
    local out=${1:-runs/demo}
    echo "== 1/3 shard the embedded demo data -> $out/shards"
    python -m data_tools shard --src data_tools/demo_data/keras_png_slices_data --out "$out/shards" \
        --samples-per-shard 16 --force --quiet
    echo "== 2/3 verify the shards against their manifest"
    python -m data_tools verify "$out/shards" --quiet
    echo "== 3/3 preview: decode the first training samples back from the shards"
    python -m data_tools preview "$out/shards" --split train --count 16 --out "$out/figures/shards_preview.png"
    echo "done: $out"
}

case "${1:-}" in
    demo) shift; demo "$@" ;;
    -h|--help|help|"") usage ;;
    *) echo "launch.sh: unknown command '$1'" >&2; usage >&2; exit 2 ;;
esac
