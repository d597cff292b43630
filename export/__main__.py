"""`python -m export COMMAND ...`: export the trained models to ONNX, then sample or reconstruct with
onnxruntime alone (only `onnx` imports torch).

    onnx -> sample | reconstruct
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from data_tools.layout import DataError
from export.model_dir import DEFAULT_OPSET
from trainer.sampling_rule import add_sampling_arguments


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    onnx = commands.add_parser(
        "onnx", help="export a prior checkpoint and its VQ-VAE to ONNX (needs torch)",
        description="Write encoder.onnx, decoder.onnx, prior_row.onnx and prior_cell.onnx (the two halves of the "
                    "exact fast sampler) and model.json (shapes, receptive field, opset, sha256 of every file and "
                    "of the source weights) into a new folder. All batch and window axes are dynamic.")
    onnx.add_argument("--checkpoint", type=Path, required=True,
                      help="prior checkpoint folder (step_NNNNNNN) or a run folder (its newest checkpoint)")
    onnx.add_argument("--out", type=Path, required=True,
                      help="folder to create; written to a temporary folder and renamed when complete")
    onnx.add_argument("--vqvae", type=Path, default=None,
                      help="VQ-VAE checkpoint (default: the one recorded in the prior's prior.json); its weights "
                           "must be the ones the prior was trained on")
    onnx.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset (default: %(default)s)")
    onnx.add_argument("--force", action="store_true", help="replace --out if it exists")

    sample = commands.add_parser(
        "sample", help="generate brains with onnxruntime (no torch)",
        description="Sample code grids with the exported prior and decode them; the same options, semantics and "
                    "output files as `python -m trainer sample`, and the same brains for the same seed.")
    sample.add_argument("--model-dir", type=Path, required=True, help="folder written by `python -m export onnx`")
    sample.add_argument("--out", type=Path, required=True,
                        help="output folder: codes/NNN.png, images/NNN.png, samples.npz, generated.png, summary.json")
    add_sampling_arguments(sample)
    sample.add_argument("--threads", type=int, default=0,
                        help="onnxruntime threads per model; 0 = onnxruntime's default (default: %(default)s)")

    recon = commands.add_parser(
        "reconstruct", help="encode and decode slices with onnxruntime (no torch)",
        description="Encode 8-bit grayscale PNG slices (or a split of shards) to code grids and decode them; "
                    "write reconstructions/, codes/ (16-bit code maps), codes.npz, code_maps.png and summary.json.")
    recon.add_argument("inputs", type=Path, nargs="*", help="PNG files, or folders of them (not recursive)")
    recon.add_argument("--model-dir", type=Path, required=True, help="folder written by `python -m export onnx`")
    recon.add_argument("--out", type=Path, required=True, help="output folder")
    recon.add_argument("--shards", type=Path, default=None,
                       help="instead of PNG files: a folder written by `python -m data_tools shard`")
    recon.add_argument("--split", default="test", choices=["train", "validate", "test"],
                       help="split of --shards to reconstruct (default: %(default)s)")
    recon.add_argument("--batch-size", type=int, default=32, help="images per batch (default: %(default)s)")
    recon.add_argument("--threads", type=int, default=0,
                       help="onnxruntime threads per model; 0 = onnxruntime's default (default: %(default)s)")
    recon.add_argument("--quiet", action="store_true", help="no progress bar")

    args = parser.parse_args(argv)
    try:
        if args.command == "onnx":
            try:
                from export.onnx_export import export_checkpoint
            except ImportError as err:   # a runtime-only install: no torch, onnx or onnxscript
                print(f"error: {err}; `onnx` needs the training install (pip install '.[train]'), `sample` and "
                      f"`reconstruct` need only onnxruntime", file=sys.stderr)
                return 2

            info = export_checkpoint(args.checkpoint, args.out, args.vqvae, args.opset, args.force)
            print(f"{args.out}: {', '.join(m['file'] for m in info['models'].values())}, model.json "
                  f"(opset {info['opset']}, grid {info['height']}x{info['width']}, K = {info['num_codes']})")
        elif args.command == "sample":
            from export.runtime import run_sampling

            summary = run_sampling(args.model_dir, args.out, n=args.n, seed=args.seed, temperature=args.temperature,
                                   top_k=args.top_k, slice_index=args.slice, batch_size=args.batch_size,
                                   threads=args.threads, show_progress=not args.quiet)
            print(f"{summary['n']} brains in {summary['seconds']:.1f} s -> {args.out} (figure: {summary['figure']})")
        else:
            from export.reconstruct import reconstruct

            summary = reconstruct(args.model_dir, args.out, args.inputs, args.shards, args.split, args.batch_size,
                                  args.threads, show_progress=not args.quiet)
            print(f"{summary['images']} slices, PSNR {summary['psnr_mean']:.2f} dB, "
                  f"{summary['images_per_second']:.1f} images/s -> {args.out}")
    except (DataError, FileExistsError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
