"""HTTP errors and the one error shape (SPEC 2.3): ``{"error": {"code", "message", "details"}}``."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import ValidationError

from gateway.services.errors import ChannelsRefusedError, ConflictError, InvalidInputError, NotFoundError


class ApiError(Exception):
    """Raised by handlers and middlewares; rendered by :func:`error_response`."""

    def __init__(self, status: int, code: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details or {}


def error_response(
    status: int,
    code: str,
    message: str,
    details: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    body = {"error": {"code": code, "message": message, "details": details or {}}}
    return web.json_response(body, status=status, headers=headers)


def field_path(loc: tuple[int | str, ...]) -> str:
    """pydantic's ('phones', 1) -> 'phones[1]'; ('sms_sender', 'mode') -> 'sms_sender.mode'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "body"


def from_validation_error(exc: ValidationError) -> ApiError:
    problems = []
    for err in exc.errors(include_url=False, include_input=False):
        loc = tuple(p for p in err["loc"] if p not in ("function-after",))
        reason = "unknown field" if err["type"] == "extra_forbidden" else err["msg"]
        problems.append({"field": field_path(loc), "reason": reason})
    first = problems[0]
    return ApiError(
        422,
        "validation_error",
        f"{first['field']}: {first['reason']}",
        {"field": first["field"], "problems": problems},
    )


def from_service_error(exc: Exception) -> ApiError | None:
    if isinstance(exc, InvalidInputError):
        return ApiError(
            422,
            "validation_error",
            f"{exc.field}: {exc.reason}",
            {"field": exc.field, "problems": [{"field": exc.field, "reason": exc.reason}]},
        )
    if isinstance(exc, ChannelsRefusedError):
        summary = ", ".join(f"{c}: {r}" for c, (r, _) in exc.refusals.items())
        return ApiError(
            422,
            "channel_refused",
            f"cannot send: {summary}",
            {"channels": {c: {"reason": r, "detail": d} for c, (r, d) in exc.refusals.items()}},
        )
    if isinstance(exc, NotFoundError):
        return ApiError(404, "not_found", str(exc), {"kind": exc.kind, "id": exc.ident})
    if isinstance(exc, ConflictError):
        return ApiError(409, exc.code, f"{exc.field}: {exc.reason}", {"field": exc.field, **exc.details})
    return None
