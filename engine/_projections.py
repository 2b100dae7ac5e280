"""The old name of ``_projectors.py``, kept only while ``_engine.py`` still imports it.

XX: delete this module once ``engine/_engine.py`` imports ``ProjectorHost`` from
``._projectors`` (issue 12, part 4: one vocabulary); nothing else imports it.
"""

from __future__ import annotations

from ._projectors import (
    WINDOW_BYTES,
    Broadcast,
    Parked,
    ProjectorHost,
    ProjectorStatistics,
    ProjectorType,
    WindowStatistics,
    detach,
)

ProjectionHost = ProjectorHost

__all__ = [
    "WINDOW_BYTES",
    "Broadcast",
    "Parked",
    "ProjectionHost",
    "ProjectorStatistics",
    "ProjectorType",
    "WindowStatistics",
    "detach",
]
