"""Scans (PNG folders or NIfTI volumes) -> shards, the first step of the data flow (torch-free).

layout          the OASIS PNG folder layout and its checks
shard           `python -m data_tools shard`: PNG folders (or, with --nifti, NIfTI volumes) -> shards + manifest
shard_writer    writing samples into a split's shards, for both inputs
nifti_sources   which NIfTI volumes to shard, whose they are, which split each subject goes to
nifti_shard     NIfTI volumes -> the same shards and manifest as the PNG layout
shard_sizes     a shard's exact size on disk (tar headers, padding, closing blocks): --max-shard-mb's cap
verify          `python -m data_tools verify`: every shard checked against the manifest
preview         `python -m data_tools preview`: a contact sheet read back from the shards
lesions         `python -m data_tools lesions`: a synthetic-lesion set (slices, masks, lesions.json) from a split
lesion_model    the synthetic lesions: shapes, sizes, intensities, where they go
morphology      binary morphology and a Gaussian blur in numpy; the head mask lesions are placed in
make_demo_data  how the embedded Colin27 demo slices were made
"""
