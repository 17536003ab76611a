"""Declared routes: each knows its auth, body model and responses, so the OpenAPI document is
generated from the same declarations that serve the requests and cannot drift from them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError
from pydantic.json_schema import models_json_schema

from gateway.http.errors import ApiError, from_validation_error
from gateway.http.schemas import ErrorOut


class Auth(StrEnum):
    NONE = "none"
    ADMIN = "admin"  # the admin token
    TENANT = "tenant"  # a tenant's API key
    ANY = "any"  # either


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the admin, or one tenant."""

    is_admin: bool
    tenant_id: str | None = None

    @property
    def tenant(self) -> str:
        """The calling tenant, on a route declared ``Auth.TENANT`` (which guarantees there is one)."""
        assert self.tenant_id is not None
        return self.tenant_id


M = TypeVar("M", bound=BaseModel)
Handler = Callable[..., Awaitable[web.StreamResponse]]
Authenticator = Callable[[web.Request, Auth], Awaitable[Principal | None]]


@dataclass(frozen=True)
class QueryParam:
    name: str
    description: str
    required: bool = False


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    summary: str
    auth: Auth
    body: type[BaseModel] | None
    responses: dict[int, type[BaseModel] | str]
    query: tuple[QueryParam, ...] = ()
    tag: str = ""


@dataclass
class Api:
    title: str
    version: str
    routes: list[Route] = field(default_factory=list)

    def route(
        self,
        method: str,
        path: str,
        *,
        summary: str,
        auth: Auth,
        responses: dict[int, type[BaseModel] | str],
        body: type[BaseModel] | None = None,
        query: tuple[QueryParam, ...] = (),
        tag: str = "",
    ) -> Callable[[Handler], Handler]:
        def decorate(handler: Handler) -> Handler:
            self.routes.append(Route(method, path, handler, summary, auth, body, responses, query, tag))
            return handler

        return decorate

    def install(self, app: web.Application, authenticate: Authenticator) -> None:
        for r in self.routes:
            app.router.add_route(r.method, r.path, _wrap(r, authenticate), name=r.handler.__name__)

    def openapi(self) -> dict[str, Any]:
        models: set[type[BaseModel]] = {ErrorOut}
        for r in self.routes:
            if r.body:
                models.add(r.body)
            models.update(m for m in r.responses.values() if isinstance(m, type))
        ordered = sorted(models, key=lambda m: m.__name__)
        keys, defs = models_json_schema(
            [(m, "validation" if _is_request(m, self.routes) else "serialization") for m in ordered],
            ref_template="#/components/schemas/{model}",
        )
        ref = {m: keys[(m, mode)] for (m, mode) in keys}
        paths: dict[str, dict[str, Any]] = {}
        for r in self.routes:
            op: dict[str, Any] = {"summary": r.summary, "operationId": r.handler.__name__}
            if r.tag:
                op["tags"] = [r.tag]
            params = [
                {"name": n, "in": "path", "required": True, "schema": {"type": "string"}}
                for n in _path_params(r.path)
            ] + [
                {
                    "name": q.name,
                    "in": "query",
                    "required": q.required,
                    "description": q.description,
                    "schema": {"type": "string"},
                }
                for q in r.query
            ]
            if params:
                op["parameters"] = params
            if r.auth is not Auth.NONE:
                op["security"] = [{"bearer": []}]
                op["description"] = {
                    Auth.ADMIN: "Needs the admin token.",
                    Auth.TENANT: "Needs a tenant API key; sees only that tenant's data.",
                    Auth.ANY: "Needs the admin token or a tenant API key.",
                }[r.auth]
            if r.body:
                op["requestBody"] = {
                    "required": True,
                    "content": {"application/json": {"schema": ref[r.body]}},
                }
            responses: dict[str, Any] = {}
            for status, model in r.responses.items():
                if isinstance(model, str):
                    responses[str(status)] = {"description": model}
                else:
                    responses[str(status)] = {
                        "description": model.__doc__ or model.__name__,
                        "content": {"application/json": {"schema": ref[model]}},
                    }
            error_codes = {400, 401, 403, 404, 409, 422} if r.auth is not Auth.NONE else set()
            if not r.body:
                error_codes -= {400}
            for status in sorted(error_codes - set(r.responses)):
                responses[str(status)] = {
                    "description": "error",
                    "content": {"application/json": {"schema": ref[ErrorOut]}},
                }
            openapi_path = r.path
            paths.setdefault(openapi_path, {})[r.method.lower()] = op
        return {
            "openapi": "3.1.0",
            "info": {"title": self.title, "version": self.version},
            "paths": paths,
            "components": {
                "schemas": defs.get("$defs", {}),
                "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            },
        }


def _is_request(model: type[BaseModel], routes: list[Route]) -> bool:
    return any(r.body is model for r in routes)


def _path_params(path: str) -> list[str]:
    return [seg[1:-1].split(":")[0] for seg in path.split("/") if seg.startswith("{") and seg.endswith("}")]


def _wrap(
    route: Route, authenticate: Authenticator
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handler(request: web.Request) -> web.StreamResponse:
        kwargs: dict[str, Any] = {}
        if route.auth is not Auth.NONE:
            principal = await authenticate(request, route.auth)
            if principal is None:
                raise ApiError(401, "unauthorized", "missing or invalid bearer token")
            if route.auth is Auth.ADMIN and not principal.is_admin:
                raise ApiError(403, "forbidden", "this operation needs the admin token")
            if route.auth is Auth.TENANT and principal.tenant_id is None:
                raise ApiError(403, "forbidden", "this operation needs a tenant API key")
            kwargs["principal"] = principal
        if route.body is not None:
            kwargs["body"] = await parse_body(request, route.body)
        return await route.handler(request, **kwargs)

    handler.__name__ = route.handler.__name__
    return handler


async def parse_body(request: web.Request, model: type[M]) -> M:
    raw = await request.read()
    if not raw.strip():
        raise ApiError(400, "invalid_json", "the request body must be a JSON object")
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        if any(e["type"] == "json_invalid" for e in errors):
            raise ApiError(
                400, "invalid_json", f"the request body is not valid JSON: {errors[0]['msg']}"
            ) from None
        if any(e["type"] == "model_type" and not e["loc"] for e in errors):
            raise ApiError(400, "invalid_json", "the request body must be a JSON object") from None
        raise from_validation_error(exc) from None
