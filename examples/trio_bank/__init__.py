"""The same bank API served on trio: hypercorn's trio worker, the engine opened by the
program's own main task. Run it with ``python -m examples.trio_bank --data bank-data/``."""
