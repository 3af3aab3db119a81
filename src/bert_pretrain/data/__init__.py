"""Data: the HDF5 shard schema, text to instances, and the training/eval loaders."""
