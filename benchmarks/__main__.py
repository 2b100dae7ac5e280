"""``python -m benchmarks``: until the harness lands, the bank demo."""

from .demo import main

main()
