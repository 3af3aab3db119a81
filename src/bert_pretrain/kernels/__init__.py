"""Kernels the model and LAMB can use in place of plain PyTorch: each equals a written-out reference in its tests."""
