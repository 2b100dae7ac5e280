"""``python -m benchmarks``: the bank workloads beside their floors and peer."""

import sys

from .harness import main

sys.exit(main())
