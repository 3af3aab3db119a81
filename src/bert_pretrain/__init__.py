"""BERT pretraining (masked-LM + next-sentence prediction) as MLPerf Training defines it, on stock PyTorch."""

__version__ = "0.1.0"
