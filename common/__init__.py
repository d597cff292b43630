"""The base layer, under every other package: file formats and helpers that need no torch, so that the
shard writer, the training side and the onnxruntime runtime all read and write the same things.

    errors          DataError: bad input data, named with its problem
    shard_format    the on-disk shard format: tar members, manifest, pixel statistics, IMAGE_SIZE
    png_header      a PNG's bit depth and size from its header, before any pixel is decoded; reading a slice PNG
nifti_volume    NIfTI volumes <-> 256x256 slices oriented like the OASIS PNGs, and back
nifti_options   the slicing options shard --nifti and reconstruct --nifti share; a volume cut and put back
    digest          sha256 of files (shards, checkpoints, ONNX files)
    json_file       reading a JSON object file with one-line errors
    output_dir      atomic output folders and files; what --force may replace
    cli             the command-line conventions every command shares, and the shared options
    cli_types       argparse types for numbers with bounds
    limits          the documented bounds of counts, seeds, threads and K, and why each
    sampling_rule   the random numbers and the draw rule both samplers follow (numpy)
    slice_inputs    the slices a command runs the models on: PNG files, a split of shards, a NIfTI volume
    anomaly_maps    anomaly maps after the prior: the healing rule, the map, the score, the healthy thresholds
    anomaly_run     what `trainer anomaly` and `export anomaly` share: options, inputs, the run, the files
    kv_cache        the transformer prior's key/value cache layout (torch or numpy arrays)
    sample_files    the files a batch of generated brains is written as
    code_usage      codebook perplexity (one definition, numpy or torch)
    ssim            SSIM in numpy, torchmetrics' recipe
    detection_metrics  slice AUROC, pixel average precision and Dice of anomaly maps (numpy, exact, tie-aware)
    figures/        every figure, one module per stage (see figures/__init__.py)

Nothing here imports torch or another package of the project (tests/test_runtime_boundary.py and
tests/test_layout.py check it); every other package imports from here.
"""
