"""actorlog's benchmark harness and the shared bank domain. Run ``python -m benchmarks``."""
