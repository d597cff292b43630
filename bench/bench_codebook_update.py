"""EMA codebook vs the paper's codebook loss, side by side: same config, seed and data.

    python bench/bench_codebook_update.py --config configs/vqvae_demo_cpu.yaml --shards runs/demo/shards

Trains once per `quantizer.update` mode and reports the final validation SSIM/PSNR and codebook
usage from each run's metrics.jsonl. This is the measurement behind `update: ema` as the default.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from trainer.run.config_file import load_config
from trainer.stage1.config import VQVAEConfig
from trainer.stage1.train import train_vqvae


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--config",
        type=Path,
        default=Path("configs/vqvae_demo_cpu.yaml"),
        help="stage 1 config to train with (default: %(default)s)",
    )
    parser.add_argument("--shards", required=True, help="shard folder to train and validate on")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="further config overrides, applied to both runs",
    )
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = parser.parse_args()

    results = {}
    with tempfile.TemporaryDirectory() as work:
        for mode in ("ema", "loss"):
            overrides = [
                f"data.shards={args.shards}",
                f"out_dir={work}/{mode}",
                f"quantizer.update={mode}",
                "wandb.enabled=false",
                "train.eval_batches=0",
                *args.overrides,
            ]
            train_vqvae(load_config(args.config, overrides, cls=VQVAEConfig), show_progress=False)
            last = json.loads((Path(work) / mode / "metrics.jsonl").read_text().splitlines()[-1])
            results[mode] = {
                k: last[k]
                for k in ("step", "val_ssim", "val_psnr", "val_codes_used", "val_codebook_perplexity", "recon_loss")
            }
    print(f"{'update':<8}{'val SSIM':>10}{'val PSNR':>10}{'codes used':>12}{'perplexity':>12}")
    for mode, r in results.items():
        print(
            f"{mode:<8}{r['val_ssim']:>10.4f}{r['val_psnr']:>10.2f}{r['val_codes_used']:>12}"
            f"{r['val_codebook_perplexity']:>12.1f}"
        )
    if args.json:
        args.json.write_text(
            json.dumps({"config": str(args.config), "overrides": args.overrides, **results}, indent=1) + "\n"
        )


if __name__ == "__main__":
    main()
