"""Process logging: today's text lines or one JSON object per line (``MDMFLOW_LOG_FORMAT``).

Also keeps an expected, permanent failure (a non-retryable ``ApplicationError`` such as
an unknown enrollment) to one line: the Temporal SDK logs each with its full traceback,
which for a fleet-sized start of unknown IDs floods the log with identical stacks.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

from mdmflow import config

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"

# Attributes every LogRecord has; anything else on a record came from ``extra``.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "taskName",
    "temporal_log",
}


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return str(value)
    return value


class JsonFormatter(logging.Formatter):
    """time (ISO 8601 UTC), level, logger, message, exception, then any ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            doc["exception"] = record.exc_text
        if record.stack_info:
            doc["stack"] = self.formatStack(record.stack_info)
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_") and key not in doc:
                doc[key] = _jsonable(value)
        return json.dumps(doc, ensure_ascii=False)


class PermanentFailureFilter(logging.Filter):
    """Log a non-retryable ``ApplicationError`` from the SDK as one line, no traceback.

    Such an error is an outcome the run reports (its message says what to fix), not a
    bug to debug; retryable and unexpected errors keep their tracebacks.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.exc_info or not record.name.startswith("temporalio"):
            return True
        # imported here: CLI commands that never load the SDK do not pay for it
        from temporalio.exceptions import ApplicationError

        err = record.exc_info[1]
        if isinstance(err, ApplicationError) and err.non_retryable:
            record.msg = f"{record.getMessage()}: {err} (non-retryable)"
            record.args = ()
            record.exc_info = None
            record.exc_text = None
            record.error_type = err.type or "ApplicationError"
        return True


class _StderrHandler(logging.StreamHandler[TextIO]):
    """Writes to whatever ``sys.stderr`` is at the time (it may be swapped, as in tests)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass


_installed: logging.Handler | None = None


def configure_logging(verbose: bool, stream: TextIO | None = None) -> logging.Handler:
    """Install the process's log handler on the root logger (again: replaces it).

    ``stream`` defaults to standard error. Raises ``ValueError`` for an unknown format.
    """
    global _installed
    fmt = config.log_format()
    handler = logging.StreamHandler(stream) if stream is not None else _StderrHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    handler.addFilter(PermanentFailureFilter())
    root = logging.getLogger()
    if _installed is not None:
        root.removeHandler(_installed)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    _installed = handler
    # One line per HTTP request drowns what the services themselves say.
    logging.getLogger("httpx").setLevel(logging.DEBUG if verbose else logging.WARNING)
    if fmt == "json" or "temporalio.activity" in sys.modules:
        from temporalio import activity, workflow

        # JSON carries a run's details as fields (temporal_activity, temporal_workflow),
        # not again inside every message.
        activity.logger.activity_info_on_message = fmt != "json"
        workflow.logger.workflow_info_on_message = fmt != "json"
    return handler


def json_logs() -> bool:
    """Whether this process logs JSON (the SDK core is then told to write JSON too)."""
    return config.log_format() == "json"
