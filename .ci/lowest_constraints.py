"""Print a pip constraints file pinning each runtime dependency to its declared lower bound:
the required ones, those of the ``postgres`` extra (the PostgreSQL log's driver), the
``cli`` extra (the actorlog command), the ``otel`` extra (``actorlog.otel``) and the ``web``
extra (the web host examples, which the suite runs).

CI installs the package a second time with these constraints, so the ranges in
pyproject.toml are tested at both ends: the newest releases they admit, and the lowest.
"""

import re
import sys
import tomllib
from pathlib import Path

project = tomllib.loads(Path(sys.argv[1]).read_text())["project"]
extras = project["optional-dependencies"]
# The web examples' stack is pinned low too: the suite runs them as real servers.
runtime = (
    project["dependencies"] + extras["postgres"] + extras["cli"] + extras["otel"] + extras["web"]
)
for requirement in runtime:
    match = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?\s*>=\s*([^,;\s]+)\s*", requirement)
    if match is None:
        sys.exit(f"cannot read a lower bound from {requirement!r}: declare it as name>=version")
    print(f"{match[1]}=={match[2]}")
