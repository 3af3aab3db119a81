"""Training: the loop, its setup and state, the training checkpoint, the MLPerf log and the metrics it writes."""
