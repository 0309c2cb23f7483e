"""Every call into Temporal from outside a workflow goes through mdmflow.temporal_calls.

Read from the source (no Temporal needed): the relay and the activities do not reach
into the API package, workflow handlers are named by typed method rather than by
string, and run or schedule look-ups start nowhere but in the layer.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYER = ROOT / "mdmflow" / "temporal_calls"
# Product code that runs outside workflows (workflows/ call Temporal from inside).
OUTSIDE = ("mdmflow", "starter", "relay", "activities", "store", "escrow", "protocol")

# Calls that name a handler or a workflow type by their first argument (or keyword).
NAMED_CALLS = {
    "signal": "signal",
    "query": "query",
    "execute_update": "update",
    "start_update": "update",
    "start_workflow": "workflow",
    "execute_workflow": "workflow",
    "signal_with_start_workflow": "workflow",
    "ScheduleActionStartWorkflow": "workflow",
}
# Client entry points to runs and schedules: a handle, a listing, a count, a start.
CLIENT_CALLS = frozenset(
    {
        "get_workflow_handle",
        "get_workflow_handle_for",
        "list_workflows",
        "count_workflows",
        "start_workflow",
        "execute_workflow",
        "get_schedule_handle",
        "create_schedule",
        "list_schedules",
    }
)
# Known exceptions, each with its reason.
ALLOWED_STARTER_IMPORTS: set[tuple[str, str]] = set()
ALLOWED_CLIENT_CALLS: set[tuple[str, str]] = set()


def _sources(*roots: str) -> Iterator[tuple[str, ast.Module]]:
    for root in roots:
        path = ROOT / root
        files = [path] if path.is_file() else sorted(path.rglob("*.py"))
        for file in files:
            yield file.relative_to(ROOT).as_posix(), ast.parse(file.read_text(), str(file))


def _imports(tree: ast.Module) -> Iterator[str]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            yield node.module


def _called(node: ast.Call) -> str | None:
    if isinstance(node.func, ast.Attribute):
        return node.func.attr
    if isinstance(node.func, ast.Name):
        return node.func.id
    return None


def _is_text(node: ast.expr) -> bool:
    return isinstance(node, ast.JoinedStr) or (
        isinstance(node, ast.Constant) and isinstance(node.value, str)
    )


def _in_layer(rel: str) -> bool:
    return (ROOT / rel).is_relative_to(LAYER)


def _string_named(tree: ast.Module) -> Iterator[ast.Call]:
    """Calls naming a handler or workflow type by a string instead of a typed reference."""
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or (called := _called(node)) not in NAMED_CALLS:
            continue
        named = [k.value for k in node.keywords if k.arg == NAMED_CALLS[called]]
        if any(_is_text(arg) for arg in [*node.args[:1], *named]):
            yield node


def _client_calls(tree: ast.Module) -> Iterator[str]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr in CLIENT_CALLS:
                yield node.func.attr


def test_relay_and_activities_do_not_import_the_api() -> None:
    found = {
        (rel, module)
        for rel, tree in _sources("relay", "activities")
        for module in _imports(tree)
        if module == "starter" or module.startswith("starter.")
    }
    assert found <= ALLOWED_STARTER_IMPORTS, sorted(found - ALLOWED_STARTER_IMPORTS)


def test_the_worker_takes_its_services_from_a_neutral_module() -> None:
    (_, tree), *_ = _sources("worker.py")
    assert not [m for m in _imports(tree) if m == "starter" or m.startswith("starter.")]


def test_handlers_and_workflows_are_named_by_typed_reference() -> None:
    named = [
        f"{rel}:{node.lineno} {ast.unparse(node)}"
        for rel, tree in _sources(*OUTSIDE, "worker.py")
        for node in _string_named(tree)
    ]
    assert not named, named


def test_runs_and_schedules_are_reached_only_through_the_layer() -> None:
    outside = {
        (rel, called)
        for rel, tree in _sources(*OUTSIDE, "worker.py")
        if not _in_layer(rel)
        for called in _client_calls(tree)
    }
    assert outside <= ALLOWED_CLIENT_CALLS, sorted(outside - ALLOWED_CLIENT_CALLS)


def test_the_scan_sees_what_it_forbids() -> None:
    """The checks above would find string-named calls and client calls where they exist."""
    tree = ast.parse(
        "async def f(client, h, r):\n"
        "    await h.signal('command_report', r)\n"
        "    await h.query(query=f'st{1}')\n"
        "    await client.get_workflow_handle('x').signal(W.on_report, r)\n"
        "    await client.start_workflow(W.run, r, id='x')\n"
    )
    assert [_called(c) for c in _string_named(tree)] == ["signal", "query"]
    assert sorted(_client_calls(tree)) == ["get_workflow_handle", "start_workflow"]
