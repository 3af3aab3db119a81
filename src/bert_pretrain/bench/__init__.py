"""The benchmark: this project's training step against HF transformers, timed, profiled and counted (FLOPs, power)."""
