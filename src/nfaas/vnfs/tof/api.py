"""The TOF Service API of seed 002 §4.3.4.1, as a framework-free request handler.

    GET    /service          200 [service]              list all configured services
    POST   /service          200 service | 400 | 409    configure a new service
    PUT    /service/{name}   200 service | 400 | 404 | 409   update a service
    DELETE /service/{name}   200 service | 404          delete by name or service IP

with `service = {"name": string, "serviceIP": string, "applicationIP": string}`, every
field required. `ServiceApi.handle(method, path, body)` returns (status, headers, body) so
any HTTP server (the NF function's HTTP handler, a test) can serve it.

Where the seed says nothing, the choices are: POST answers 200 (as the seed's table says,
not 201); DELETE answers with the deleted service; a name is matched before a service IP
on DELETE; errors are JSON `{"error": message}` plus `"field"` on a 400 that concerns one
field; paths and methods outside the four above get 404 / 405 (with `Allow`), including
GET /service/{name}, which the seed does not define.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import unquote

from nfaas.vnfs.tof.services import (
    Service,
    ServiceConflict,
    ServiceNotFound,
    ServiceRegistry,
    ServiceValueError,
)

__all__ = ["FIELDS", "Response", "ServiceApi"]

Response = tuple[int, list[tuple[str, str]], bytes]
FIELDS = ("name", "serviceIP", "applicationIP")
_JSON = ("content-type", "application/json")


def _reply(status: int, payload: Any, extra: list[tuple[str, str]] | None = None) -> Response:
    return status, [_JSON, *(extra or [])], json.dumps(payload).encode()


def _error(status: int, message: str, field: str | None = None) -> Response:
    payload: dict[str, str] = {"error": message}
    if field is not None:
        payload["field"] = field
    return _reply(status, payload)


def _not_allowed(method: str, where: str, allow: str) -> Response:
    message = f"{method} is not allowed on {where} (allowed: {allow})"
    return _reply(405, {"error": message}, [("allow", allow)])


class BadRequest(Exception):
    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


def parse_service(body: bytes) -> Service:
    """The `newService` object of a request body, validated; BadRequest names the problem."""
    if not body.strip():
        raise BadRequest('request body is empty; expected {"name", "serviceIP", "applicationIP"}')
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"request body is not UTF-8 (byte offset {exc.start})") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadRequest(
            f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno} "
            f"(character {exc.pos})"
        ) from None
    except RecursionError:
        raise BadRequest("malformed JSON: nested too deeply") from None
    if not isinstance(doc, dict):
        raise BadRequest(f"expected a JSON object, got {type(doc).__name__}")
    for key in doc:
        if key not in FIELDS:
            raise BadRequest(f"unknown field {key!r} (fields: {', '.join(FIELDS)})", key)
    for key in FIELDS:
        if key not in doc:
            raise BadRequest(f"missing field {key!r}", key)
        if not isinstance(doc[key], str):
            raise BadRequest(f"{key}: must be a string, got {type(doc[key]).__name__}", key)
    try:
        return Service.of(doc["name"], doc["serviceIP"], doc["applicationIP"])
    except ServiceValueError as exc:
        raise BadRequest(str(exc), exc.field) from None


class ServiceApi:
    """Serves /service on a ServiceRegistry."""

    def __init__(self, registry: ServiceRegistry) -> None:
        self.registry = registry

    def handle(self, method: str, path: str, body: bytes = b"") -> Response:
        """One request; never raises for anything a client can send."""
        route = path.split("?", 1)[0].split("#", 1)[0]
        if route == "/service":
            if method == "GET":
                return _reply(200, [s.to_json() for s in self.registry.list()])
            if method == "POST":
                return self._create(body)
            return _not_allowed(method, "/service", "GET, POST")
        if route.startswith("/service/"):
            segment = route[len("/service/") :]
            if not segment or "/" in segment:
                return _error(404, f"no such resource: {route}")
            try:
                name = unquote(segment, errors="strict")
            except UnicodeDecodeError:
                return _error(404, f"no such resource: {route} (not UTF-8 once decoded)")
            if method == "PUT":
                return self._update(name, body)
            if method == "DELETE":
                return self._delete(name)
            return _not_allowed(method, "/service/{name}", "PUT, DELETE")
        return _error(404, f"no such resource: {route}")

    def _create(self, body: bytes) -> Response:
        try:
            service = parse_service(body)
            return _reply(200, self.registry.create(service).to_json())
        except BadRequest as exc:
            return _error(400, str(exc), exc.field)
        except ServiceConflict as exc:
            return _error(409, str(exc))

    def _update(self, name: str, body: bytes) -> Response:
        try:
            service = parse_service(body)
            if service.name != name:
                raise BadRequest(
                    f"name: {service.name!r} in the body differs from {name!r} in the path",
                    "name",
                )
            return _reply(200, self.registry.update(name, service).to_json())
        except BadRequest as exc:
            return _error(400, str(exc), exc.field)
        except ServiceNotFound as exc:
            return _error(404, str(exc))
        except ServiceConflict as exc:
            return _error(409, str(exc))

    def _delete(self, name: str) -> Response:
        try:
            return _reply(200, self.registry.delete(name).to_json())
        except ServiceNotFound as exc:
            return _error(404, str(exc))
