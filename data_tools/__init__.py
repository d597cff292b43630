"""PNG folders -> WebDataset shards: the first step of the data flow (see README)."""
