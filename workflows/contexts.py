"""What context each workflow accepts, checked strictly before anything starts.

A workflow's run parses its ``context`` leniently, and must keep doing so: runs already
recorded replay the same code. Strictness lives here instead, on the way in (API starts,
event subscriptions, schedules): :func:`validate_context` refuses broken JSON, a
non-object where an object is expected, unknown fields, wrong types and empty required
values with a :class:`ContextError` naming the field. It never guesses: a context it
accepts means to the workflow exactly what it means here.

The convention a workflow class follows (a line or two for a new workflow):

- ``CONTEXT: ClassVar[type[BaseModel]] = SomeContext`` names the model of its context;
- a JSON-object context needs nothing more (:func:`from_json` checks it); a context of
  another syntax (a comma list, a plan name, a plain message, none at all) gives the
  model a classmethod ``from_context(raw: str | None) -> Self`` raising ContextError.

``from_context``, not ``parse``: a model's ``parse`` may be the lenient run-time one
(``LockContext.parse``, ``PollContext.parse``); those workflows declare ``CONTEXT``.
A workflow without ``CONTEXT`` is read by the ``parse`` classmethod of the one model
of its module that has one, which must then be strict (ValueError naming the field);
with no such model, or several, it accepts no context and a start with one is refused.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from types import NoneType, UnionType
from typing import Any, TypeVar, Union, cast, get_args, get_origin

from pydantic import BaseModel, ConfigDict, ValidationError

M = TypeVar("M", bound=BaseModel)


class ContextError(ValueError):
    """A context the workflow would not understand; names the field and the problem."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        where = "context" if field == "context" else f"context field {field!r}"
        super().__init__(f"{where}: {problem}")


class NoContext(BaseModel):
    """The context of a workflow that takes none (NanoCMD's ``NewContextValue`` is nil).

    NanoCMD silently ignores a context given to such a workflow; it is refused here, so
    an operator never believes a context did something.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    @classmethod
    def from_context(cls, raw: str | None) -> NoContext:
        if raw:
            raise ContextError("context", "this workflow takes no context")
        return cls()


def _refuse_constant(name: str) -> float:
    raise ContextError("context", f"{name} is not a number JSON allows")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ContextError("context", f"{text} is too large a number")
    return value


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    for key, value in pairs:
        if key in doc:
            raise ContextError(key, "given twice")
        doc[key] = value
    return doc


def json_object(raw: str) -> dict[str, Any]:
    """``raw`` as a JSON object, or ContextError (broken JSON, another JSON type,
    a key given twice, NaN or Infinity)."""
    try:
        doc = json.loads(
            raw,
            object_pairs_hook=_no_duplicates,
            parse_constant=_refuse_constant,
            parse_float=_finite_float,
        )
    except json.JSONDecodeError as exc:
        raise ContextError(
            "context", f"not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from exc
    if not isinstance(doc, dict):
        raise ContextError("context", f"must be a JSON object, not {_json_type(doc)}")
    return doc


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "null"


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    """The model a field holds directly or as ``Model | None``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) in (Union, UnionType):
        models = [a for a in get_args(annotation) if a is not NoneType]
        if len(models) == 1:
            return _nested_model(models[0])
    return None


def _unknown_field(model: type[BaseModel], doc: dict[str, Any], prefix: str = "") -> str | None:
    """The first key of ``doc`` (at any depth of nested models) ``model`` has no field for."""
    names = {(f.alias or n): f for n, f in model.model_fields.items()}
    for key, value in doc.items():
        field = names.get(key)
        if field is None:
            return prefix + key
        nested = _nested_model(field.annotation)
        if nested is not None and isinstance(value, dict):
            if (found := _unknown_field(nested, value, f"{prefix}{key}.")) is not None:
                return found
    return None


def validation_problem(exc: ValidationError) -> ContextError:
    """The first problem pydantic found, as a ContextError naming its field."""
    error = exc.errors()[0]
    field = ".".join(str(p) for p in error["loc"]) or "context"
    return ContextError(field, error["msg"][:1].lower() + error["msg"][1:])


def from_json(model: type[M], raw: str | None) -> M:
    """Strictly: ``raw`` is a JSON object of ``model``'s fields (no others, exact types).

    No context is the model's defaults, or ContextError when it has required fields.
    """
    if not raw:
        required = [n for n, f in model.model_fields.items() if f.is_required()]
        if required:
            raise ContextError("context", f"required: a JSON object with {', '.join(required)}")
        return model()
    doc = json_object(raw)
    if (unknown := _unknown_field(model, doc)) is not None:
        raise ContextError(unknown, "unknown field")
    try:
        return model.model_validate(doc, strict=True)
    except ValidationError as exc:
        raise validation_problem(exc) from exc


def _module_parse(workflow: type) -> Callable[[str | None], BaseModel] | None:
    """The ``parse`` classmethod of the one model in ``workflow``'s module that has one."""
    module = sys.modules.get(workflow.__module__)
    found = [
        cast(Any, value).parse
        for value in (vars(module) if module is not None else {}).values()
        if isinstance(value, type)
        and issubclass(value, BaseModel)
        and value.__module__ == workflow.__module__
        and isinstance(value.__dict__.get("parse"), classmethod)
    ]
    if len(found) != 1:
        return None
    parse: Callable[[str | None], BaseModel] = found[0]

    def strict(raw: str | None) -> BaseModel:
        try:
            return parse(raw)
        except ContextError:
            raise
        except ValueError as exc:
            raise ContextError("context", str(exc)) from exc

    return strict


def parser_of(workflow: type) -> Callable[[str | None], BaseModel]:
    """How ``workflow`` reads a context, per the convention above."""
    model: type[BaseModel] | None = getattr(workflow, "CONTEXT", None)
    if model is None:
        return _module_parse(workflow) or NoContext.from_context
    custom: Callable[[str | None], BaseModel] | None = getattr(model, "from_context", None)
    if custom is not None:
        return custom
    return lambda raw: from_json(model, raw)


def validate_context(workflow_name: str, raw: str | None) -> BaseModel:
    """The context ``raw`` as ``workflow_name`` declares it, or ContextError.

    Call it before starting anything (API starts, event subscriptions, schedules); the
    run is then started with ``raw`` itself, which means what the returned model says.
    """
    from workflows.registry import BY_NAME  # the workflows import this module

    workflow = BY_NAME.get(workflow_name)
    if workflow is None:
        raise ContextError("workflow", f"no workflow named {workflow_name!r}")
    return parser_of(workflow)(raw)
