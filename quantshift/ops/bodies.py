"""The control API's requests: what each action accepts, checked strictly, and the
control plane's command it becomes.

A body is optional (empty means every default); when present it must be a JSON object
whose fields have the right types and names, or the request is refused with a message.
Free text (a reason) goes to the log and the journal, so it is kept to one short line.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from quantshift.control import (
    AddVersion,
    Command,
    ControlRefused,
    Flatten,
    Halt,
    Handover,
    Promote,
    Reduce,
    Resume,
    Rollback,
    SetCanary,
    SetStatus,
)

__all__ = ["ACTIONS", "PATH_ACTIONS", "BadRequest", "ControlRefused", "parse_body", "to_command"]

# One printable line: a reason lands in log lines and the journal as it is.
Reason = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200,
                                          pattern=r"^[^\x00-\x1f\x7f]*$")]
Name = Annotated[str, StringConstraints(min_length=1, max_length=64,
                                        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]


class _Body(BaseModel):
    # strict: "true" is not a boolean, 1 is not a string; forbid: a typo is not ignored.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    bot: Name | None = None  # when given, the daemon must be this bot (a wrong port is caught)


class HaltBody(_Body):
    reason: Reason = "halted by the operator"
    flatten: bool = False


class ResumeBody(_Body):
    pass


class FlattenBody(_Body):
    reason: Reason = "flattened by the operator"


class ReduceBody(_Body):
    reason: Reason = "reduce-only by the operator"


class PromoteBody(_Body):
    strategy: Name
    version: Name
    force: bool = False
    reason: Reason | None = None  # why, for the history


class RollbackBody(_Body):
    strategy: Name
    reason: Reason | None = None


Percent = Annotated[int, Field(ge=0, le=100)]


class VersionBody(_Body):
    """``POST /versions/<strategy>/<version>``: the path names the version."""

    strategy: Name
    version: Name
    status: Literal["shadow", "canary", "retired"]
    percent: Percent | None = None  # a canary's share (default: the strategy's)
    reason: Reason | None = None


Scalar = bool | int | float | str  # a parameter's value (strict: 1 is not "1")


class AddBody(_Body):
    """``POST /versions``: a new version of a configured strategy, as a shadow."""

    strategy: Name
    version: Name
    name: Name | None = None  # the registered strategy it runs (default: the entry's)
    params: dict[Name, Scalar] = Field(default_factory=dict, max_length=64)
    exits: dict[Name, Scalar] | None = None
    reason: Reason | None = None


class CanaryBody(_Body):
    strategy: Name
    percent: Percent
    reason: Reason | None = None


class HandoverBody(_Body):
    to: Name | None = None  # the instance to take the lease next (default: any standby)
    reason: Reason = "handed over by the operator"


ACTIONS: dict[str, type[_Body]] = {
    "halt": HaltBody, "resume": ResumeBody, "flatten": FlattenBody, "reduce": ReduceBody,
    "promote": PromoteBody, "rollback": RollbackBody, "handover": HandoverBody,
    "canary": CanaryBody, "version": VersionBody, "add": AddBody,
}
# Served under a path of their own (``/versions``...), not as ``POST /<action>``.
PATH_ACTIONS = {"version", "add"}


class BadRequest(Exception):
    """The request cannot be understood (HTTP 400); the message says why."""


def parse_body(action: str, raw: bytes, path: dict[str, str] | None = None) -> Any:
    """The action's body model from the raw request body (and the fields the path
    names, which the body may not name again); BadRequest with a reason."""
    model = ACTIONS[action]
    if raw.strip() == b"":
        data: Any = {}
    else:
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise BadRequest("the body is not valid JSON") from None
    if not isinstance(data, dict):
        raise BadRequest("the body must be a JSON object")
    for key, value in (path or {}).items():
        if key in data:
            raise BadRequest(f"{key!r} is in the path; the body may not name it again")
        data[key] = value
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise BadRequest(_describe(exc)) from None


def to_command(action: str, body: Any, actor: str) -> Command:
    """The control plane's command for a validated request body."""
    if action == "halt":
        return Halt(by=actor, reason=body.reason, flatten=body.flatten)
    if action == "resume":
        return Resume(by=actor)
    if action == "reduce":
        return Reduce(by=actor, reason=body.reason)
    if action == "flatten":
        return Flatten(by=actor, reason=body.reason)
    if action == "promote":
        return Promote(by=actor, reason=body.reason or "", strategy=body.strategy,
                       version=body.version, force=body.force)
    if action == "rollback":
        return Rollback(by=actor, reason=body.reason or "", strategy=body.strategy)
    if action == "version":
        return SetStatus(by=actor, reason=body.reason or "", strategy=body.strategy,
                         version=body.version, status=body.status, percent=body.percent)
    if action == "add":
        return AddVersion(by=actor, reason=body.reason or "", strategy=body.strategy,
                          version=body.version, strategy_name=body.name,
                          parameters=dict(body.params), exits=body.exits)
    if action == "canary":
        return SetCanary(by=actor, reason=body.reason or "", strategy=body.strategy,
                         percent=body.percent)
    if action == "handover":
        return Handover(by=actor, reason=body.reason, to=body.to or "")
    raise ControlRefused(f"unknown action {action!r}", 404)


def _describe(exc: ValidationError) -> str:
    """The first problem in plain words, without echoing the value sent."""
    err = exc.errors(include_url=False, include_input=False)[0]
    field = ".".join(str(p) for p in err.get("loc", ())) or "body"
    if err.get("type") == "extra_forbidden":
        return f"unknown field {field[:64]!r}"
    if err.get("type") == "missing":
        return f"field {field!r} is required"
    return f"field {field[:64]!r}: {err.get('msg', 'invalid value')}"
