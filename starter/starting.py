"""Starts are made by :mod:`mdmflow.temporal_calls.starts`; these names stay importable here."""

from mdmflow.temporal_calls.starts import (
    DEFAULT_CHUNK,
    MAX_CHUNK,
    StartError,
    StartResult,
    chunk_size_from_env,
    start_workflow,
    validate_ids,
)

__all__ = [
    "DEFAULT_CHUNK",
    "MAX_CHUNK",
    "StartError",
    "StartResult",
    "chunk_size_from_env",
    "start_workflow",
    "validate_ids",
]
