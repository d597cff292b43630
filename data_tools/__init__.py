"""Scans -> shards, the first step of the data flow (torch-free).

layout          the OASIS PNG folder layout and its checks
shard           `python -m data_tools shard`: PNG folders -> WebDataset shards + manifest
shard_sizes     a shard's exact size on disk (tar headers, padding, closing blocks): --max-shard-mb's cap
verify          `python -m data_tools verify`: every shard checked against the manifest
preview         `python -m data_tools preview`: a contact sheet read back from the shards
make_demo_data  how the embedded Colin27 demo slices were made
"""
