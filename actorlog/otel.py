"""OpenTelemetry for actorlog (``pip install 'actorlog[otel]'``): spans and metrics.

::

    from actorlog.otel import OpenTelemetry

    async with Engine.open("data/", aggregates=[Account], telemetry=OpenTelemetry()) as engine:
        ...

Spans go to the global tracer provider and metrics to the global meter provider unless
others are passed (configure the SDK and its exporters as usual). Importing this module
imports ``opentelemetry``; ``actorlog`` itself never does.
"""

from .engine._otel import OpenTelemetry
from .engine._public import publish

__all__ = ["OpenTelemetry"]

publish(__name__, globals(), __all__)
