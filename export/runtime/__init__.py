"""The torch-free runtime: everything a CPU box needs to read shards and exported models, sample and
reconstruct brains with onnxruntime, and write the same files and figures as the training side.

    sampling_rule   the random numbers and the draw rule both samplers follow (numpy)
    sample_files    the files a batch of generated brains is written as
    figures         every figure of the project (numpy + matplotlib)
    shard_format    the on-disk shard format: tar members, manifest, DataError
    model_dir       the exported model folder contract (model.json)
    digest          sha256 of files (shards, checkpoints, ONNX files)
    onnx_models     the exported models run by onnxruntime
    sample          `python -m export sample`
    reconstruct     `python -m export reconstruct`
    cli             the command-line conventions every command shares

The boundary is a package boundary: nothing here imports torch, accelerate, webdataset or any
module of `trainer`, `data_tools` or `export` outside this package (tests/test_runtime_boundary.py
checks every module). The training side imports from here, never the reverse.
"""
