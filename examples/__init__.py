"""Runnable examples of hosting actorlog (not installed with the package)."""
