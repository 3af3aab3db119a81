"""Data: tokenization, text to instances, the HDF5 shard schema, and the training/eval loaders."""
