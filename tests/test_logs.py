"""Log formats (``MDMFLOW_LOG_FORMAT``) and one line, no traceback, for permanent failures."""

from __future__ import annotations

import io
import json
import logging
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest
from temporalio import activity, workflow
from temporalio.client import WorkflowFailureError
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from mdmflow.logs import configure_logging
from mdmflow.temporal_client import sdk_runtime
from tests.logging_state import restored_logging


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    with restored_logging():
        yield


def _lines(out: io.StringIO) -> list[str]:
    return [line for line in out.getvalue().splitlines() if line]


def test_json_lines_parse_including_exceptions_and_extras(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MDMFLOW_LOG_FORMAT", "json")
    out = io.StringIO()
    configure_logging(verbose=False, stream=out)
    log = logging.getLogger("mdmflow.test")
    log.info("hello %s", "world", extra={"enrollment_id": "E1", "odd": object()})
    log.debug("not shown without -v")
    try:
        raise ValueError("bad\nvalue")
    except ValueError:
        log.exception("it broke")
    docs = [json.loads(line) for line in _lines(out)]  # every line is one JSON object
    assert len(docs) == 2
    first, second = docs
    assert first["message"] == "hello world" and first["level"] == "INFO"
    assert first["logger"] == "mdmflow.test" and first["enrollment_id"] == "E1"
    assert first["odd"].startswith("<object object")
    assert first["time"].endswith("Z")
    assert datetime.fromisoformat(first["time"].replace("Z", "+00:00")).utcoffset() == timedelta(0)
    assert second["level"] == "ERROR" and second["message"] == "it broke"
    assert "Traceback" in second["exception"] and "ValueError: bad" in second["exception"]


def test_text_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MDMFLOW_LOG_FORMAT", raising=False)
    out = io.StringIO()
    configure_logging(verbose=True, stream=out)
    logging.getLogger("mdmflow.test").debug("shown with -v")
    (line,) = _lines(out)
    assert line.endswith(" DEBUG mdmflow.test shown with -v")


def test_unknown_format_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MDMFLOW_LOG_FORMAT", "xml")
    with pytest.raises(ValueError, match="MDMFLOW_LOG_FORMAT"):
        configure_logging(verbose=False, stream=io.StringIO())


def _log_failure(logger: str, err: BaseException) -> None:
    try:
        raise err
    except BaseException:
        logging.getLogger(logger).warning("Completing activity as failed", exc_info=True)


def test_only_permanent_sdk_failures_lose_their_traceback() -> None:
    out = io.StringIO()
    configure_logging(verbose=False, stream=out)
    permanent = ApplicationError(
        "unknown enrollment X", type="MdmPermanentError", non_retryable=True
    )
    _log_failure("temporalio.activity", permanent)
    text = out.getvalue()
    assert _lines(out) == [text.strip()]  # one line
    assert "Traceback" not in text
    assert "MdmPermanentError: unknown enrollment X (non-retryable)" in text
    for logger, err in [
        ("temporalio.activity", ApplicationError("try again", type="Transient")),
        ("temporalio.activity", RuntimeError("a bug")),
        ("mdmflow.worker", permanent),  # our own code logs tracebacks it asks for
    ]:
        out.seek(0)
        out.truncate()
        _log_failure(logger, err)
        assert "Traceback" in out.getvalue(), (logger, err)


@activity.defn
async def fail(permanent: bool) -> None:
    if permanent:
        raise ApplicationError("unknown enrollment X", type="MdmPermanentError", non_retryable=True)
    raise RuntimeError("connection reset")


@workflow.defn(sandboxed=False)
class Failing:
    @workflow.run
    async def run(self, permanent: bool) -> None:
        await workflow.execute_activity(
            fail,
            permanent,
            start_to_close_timeout=timedelta(seconds=10),
            retry_policy=RetryPolicy(maximum_attempts=1),
        )


async def test_the_sdk_activity_failure_log(
    time_env: WorkflowEnvironment, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the SDK's worker logs for a failed activity, as it reaches the handler."""
    monkeypatch.setenv("MDMFLOW_LOG_FORMAT", "json")
    out = io.StringIO()
    configure_logging(verbose=False, stream=out)
    queue = f"logs-{uuid.uuid4()}"
    async with Worker(time_env.client, task_queue=queue, workflows=[Failing], activities=[fail]):
        for permanent in (True, False):
            with pytest.raises(WorkflowFailureError):
                await time_env.client.execute_workflow(
                    Failing.run, permanent, id=f"{queue}-{permanent}", task_queue=queue
                )
    docs = [json.loads(line) for line in _lines(out)]
    failed = [d for d in docs if d["message"].startswith("Completing activity as failed")]
    assert len(failed) == 2, docs
    permanent_doc, transient_doc = failed
    assert "exception" not in permanent_doc
    assert permanent_doc["error_type"] == "MdmPermanentError"
    assert "unknown enrollment X" in permanent_doc["message"]
    assert permanent_doc["temporal_activity"]["activity_type"] == "fail"
    assert "{'activity_id'" not in permanent_doc["message"]  # details are fields in JSON
    assert "RuntimeError: connection reset" in transient_doc["exception"]


def test_json_logs_give_the_sdk_core_a_runtime_of_its_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("MDMFLOW_LOG_FORMAT", raising=False)
    assert sdk_runtime() is None  # text, no metrics: the SDK's default runtime
    monkeypatch.setenv("MDMFLOW_LOG_FORMAT", "json")
    runtime = sdk_runtime()
    assert runtime is not None and sdk_runtime() is runtime  # one per process
