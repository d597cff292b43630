"""Benchmark: onnxruntime sampling of 16 brains (32x32 grids, K = 512, 32 slice conditions) by transformer
priors of several sizes, side by side with the gated PixelCNN of configs/prior_oasis_32_cpu.yaml, in one run.

Random weights: the work per grid does not depend on them. Each transformer is exported as its
`prior_step` model (export/transformer_onnx.py) and sampled by export/runtime/transformer_sampler.py; the
PixelCNN by export/runtime/prior_sampler.py, as `python -m export sample` does. The issue's goal: <= 3 s per 16
brains on one core. Run it pinned to one core:
    OMP_NUM_THREADS=1 taskset -c 1 python bench/bench_transformer_sampling.py --json /tmp/bench.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import onnxruntime as ort
import torch
from bench_onnx import NUM_CODES, NUM_CONDITIONS, REPO, VQVAE_CONFIG, machine, timed

from common.sampling_rule import sampling_randomness
from export.onnx_export import export_models
from export.runtime.onnx_models import ExportedModels
from export.runtime.prior_sampler import sample_codes as pixelcnn_sample_codes
from export.runtime.transformer_sampler import sample_codes
from export.transformer_onnx import export_step
from trainer.run.config_file import load_config
from trainer.stage1.config import VQVAEConfig
from trainer.stage1.vqvae import VQVAE
from trainer.stage2.config import PriorConfig
from trainer.stage2.load import build_prior
from trainer.stage2.prior_contract import PriorShape
from trainer.stage2.transformer_prior import TransformerPrior

PIXELCNN_CONFIG = REPO / "configs" / "prior_oasis_32_cpu.yaml"
GRID = 32


def parse_size(text: str) -> dict:
    layers, width, heads, kv_heads = (int(part) for part in text.split(":"))
    return {"layers": layers, "width": width, "heads": heads, "kv_heads": kv_heads}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--sizes",
        default="4:128:4:1,6:192:6:2,6:256:8:2,6:256:8:8",
        help="transformer sizes, layers:width:heads:kv_heads, comma-separated (default: %(default)s)",
    )
    p.add_argument("--batch", type=int, default=16, help="grids sampled together (default: %(default)s)")
    p.add_argument("--no-pixelcnn", action="store_true", help="skip the PixelCNN baseline")
    p.add_argument("--json", type=Path, metavar="PATH", help="also write the results as JSON to PATH")
    args = p.parse_args()
    try:
        args.sizes = [parse_size(size) for size in args.sizes.split(",")]
    except ValueError:
        p.error("--sizes: expected layers:width:heads:kv_heads[,...] of integers")
    if args.batch < 1:
        p.error("--batch must be >= 1")
    return args


def session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def bench_transformer(size: dict, uniforms, conditions, tmp: Path) -> dict:
    torch.manual_seed(0)
    prior = TransformerPrior(PriorShape(NUM_CODES, GRID, GRID, NUM_CONDITIONS), **size, dropout=0.0).eval()
    name = "transformer_{layers}x{width}_h{heads}_kv{kv_heads}".format(**size)
    spec = export_step(prior, tmp / f"{name}.onnx")
    seconds, _ = timed(
        lambda: sample_codes(session(tmp / f"{name}.onnx"), spec, {"num_codes": NUM_CODES}, uniforms, conditions)
    )
    parameters = sum(p.numel() for p in prior.parameters())
    print(
        f"  {name:32s} {parameters / 1e6:6.2f} M parameters   wall {seconds['wall']:6.2f} s  "
        f"cpu {seconds['cpu']:6.2f} s",
        flush=True,
    )
    return {"name": name, **size, "parameters": parameters, "seconds": seconds}


def bench_pixelcnn(uniforms, conditions, tmp: Path) -> dict:
    torch.manual_seed(0)
    config = load_config(PIXELCNN_CONFIG, cls=PriorConfig)
    prior = build_prior(config, PriorShape(NUM_CODES, GRID, GRID, NUM_CONDITIONS)).eval()
    vqvae_config = load_config(VQVAE_CONFIG, ["quantizer.compile=false"], cls=VQVAEConfig)
    tmp.mkdir()
    export_models(
        prior,
        VQVAE(vqvae_config.model, vqvae_config.quantizer).eval(),
        tmp,
        source={"weights": "random (bench/bench_transformer_sampling.py)"},
    )
    models = ExportedModels(tmp, ("prior_row", "prior_cell"), threads=1)
    seconds, _ = timed(lambda: pixelcnn_sample_codes(models, uniforms, conditions))
    parameters = sum(p.numel() for p in prior.parameters())
    print(
        f"  {'pixelcnn (prior_oasis_32_cpu)':32s} {parameters / 1e6:6.2f} M parameters   "
        f"wall {seconds['wall']:6.2f} s  cpu {seconds['cpu']:6.2f} s",
        flush=True,
    )
    return {"name": "pixelcnn_prior_oasis_32_cpu", "parameters": parameters, "seconds": seconds}


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    uniforms, conditions = sampling_randomness(args.batch, GRID, GRID, NUM_CONDITIONS, seed=0)
    print(f"onnxruntime, one thread: seconds to sample {args.batch} grids of {GRID}x{GRID} (K = {NUM_CODES})")
    with tempfile.TemporaryDirectory() as tmp:
        rows = [bench_transformer(size, uniforms, conditions, Path(tmp)) for size in args.sizes]
        if not args.no_pixelcnn:
            rows.append(bench_pixelcnn(uniforms, conditions, Path(tmp) / "pixelcnn"))
    reference = rows[-1]["seconds"]["cpu"]
    for row in rows:
        row["cpu_time_ratio_to_last"] = row["seconds"]["cpu"] / reference
        print(f"  {row['name']:32s} cpu time {row['cpu_time_ratio_to_last']:5.2f}x the last row's")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "batch": args.batch, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
