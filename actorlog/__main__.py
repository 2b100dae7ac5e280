"""``python -m actorlog``: the ``actorlog`` command."""

from ._cli import main

main()
