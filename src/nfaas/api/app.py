"""The ASGI application: the raw invoke path in front of the FastAPI management API."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import BaseModel, Field

from nfaas.api.gateway import ASYNC_PREFIX, PREFIX, Gateway, Receive, Scope, Send
from nfaas.api.metrics import Metrics
from nfaas.control.auth import ALL_NAMESPACES, Principal
from nfaas.control.bundles import BundleError
from nfaas.control.platform import Conflict, Forbidden, NotFound, Platform
from nfaas.control.registry import FunctionRecord
from nfaas.core.spec import NAME_RE, SpecError, validate_name
from nfaas.events.calls import FINAL, QUEUED, RETRYING, RUNNING
from nfaas.events.queue import CallNotFound, CallStateConflict
from nfaas.events.topics import (
    DEFAULT_NAMESPACE,
    TopicConflict,
    TopicError,
    TopicNotFound,
    topic_from_request,
)
from nfaas.node.agent import UnknownFunction

CALL_STATES = (QUEUED, RUNNING, RETRYING, *FINAL)


class Deployment(BaseModel):
    """A function to create or update. ``service`` is accepted as OpenFaaS's name for ``name``."""

    name: str | None = None
    service: str | None = None
    namespace: str | None = None
    bundle: str = Field(description="sha256 of an uploaded bundle (POST /system/bundles)")
    spec: dict[str, Any] = Field(
        default_factory=dict,
        description="runtime, isolation, scale, limits, env, labels, public, network, ports",
    )


class DeleteFunction(BaseModel):
    functionName: str
    namespace: str | None = None


class ScaleRequest(BaseModel):
    serviceName: str | None = None
    namespace: str | None = None
    replicas: int = Field(ge=0)


class TopicSettings(BaseModel):
    """A topic's settings; absent ones take their defaults (see docs/events.md)."""

    subjects: list[str] | None = None
    retention: str | None = Field(None, description="limits | interest | workqueue")
    storage: str | None = Field(None, description="file | memory")
    max_age: str | float | None = Field(None, description="e.g. 24h; 0: unlimited")
    max_bytes: str | int | None = Field(None, description="e.g. 1Gi; -1: unlimited")
    max_msgs: int | None = None
    max_msgs_per_subject: int | None = None
    max_msg_size: str | int | None = None
    labels: dict[str, str] | None = None
    description: str | None = None

    def settings(self) -> dict[str, Any]:
        dumped = self.model_dump()
        return {k: v for k, v in dumped.items() if v is not None and k not in ("name", "namespace")}


class TopicBody(TopicSettings):
    name: str
    namespace: str | None = Field(
        None, description="the owning namespace (admin token; others own what they create)"
    )


class TokenRequest(BaseModel):
    namespace: str


def function_status(
    platform: Platform, record: FunctionRecord, detail: bool = False
) -> dict[str, Any]:
    spec = record.spec
    pool = platform.agent.pools.get((record.namespace, spec.name))
    replicas = len(pool.slots) if pool else 0
    out: dict[str, Any] = {
        "name": spec.name,
        "namespace": record.namespace,
        "runtime": spec.runtime,
        "isolation": spec.isolation,
        "bundle": record.bundle,
        "replicas": replicas,
        "availableReplicas": replicas,
        "invocationCount": pool.invocations if pool else 0,
        "labels": spec.labels,
        "public": spec.public,
        "createdAt": record.created,
        "updatedAt": record.updated,
        "scale": {
            "min": spec.scale.min,
            "max": spec.scale.max,
            "target_concurrency": spec.scale.target_concurrency,
            "idle_timeout": spec.scale.idle_timeout,
            "pause_after": spec.scale.pause_after,
        },
        "limits": {
            "memory": spec.limits.memory,
            "cpu": spec.limits.cpu,
            "timeout": spec.limits.timeout,
            "max_body": spec.limits.max_body,
            "cpu_time": spec.limits.cpu_time,
            "open_files": spec.limits.open_files,
            "processes": spec.limits.processes,
        },
    }
    if spec.ports:
        out["ports"] = spec.ports
    if spec.command:
        out["command"] = list(spec.command)
    if spec.triggers:
        out["triggers"] = [t.to_manifest() for t in spec.triggers]
    if detail:
        out["envVars"] = spec.env
        out["status"] = platform.status(record)
    return out


def create_app(platform: Platform) -> Any:
    metrics = Metrics(platform.agent, platform.events)
    platform.cold_start_listeners.append(metrics.observe_cold_start)
    gateway = Gateway(platform, metrics)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await platform.start()
        try:
            yield
        finally:
            await platform.stop()

    api = FastAPI(title="nfaas", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None)

    def principal(request: Request) -> Principal:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        found = platform.tokens.verify(token.strip()) if scheme.lower() == "bearer" else None
        if found is None:
            raise _Unauthorized
        return found

    def admin(who: Principal = Depends(principal)) -> Principal:
        if not who.is_admin:
            raise Forbidden("this needs the admin token")
        return who

    @api.exception_handler(SpecError)
    async def _spec(_: Request, exc: SpecError) -> JSONResponse:
        return JSONResponse({"error": str(exc), "field": exc.field}, status_code=400)

    @api.exception_handler(BundleError)
    async def _bundle(_: Request, exc: BundleError) -> JSONResponse:
        return JSONResponse({"error": str(exc), "field": "bundle"}, status_code=400)

    @api.exception_handler(NotFound)
    @api.exception_handler(UnknownFunction)
    async def _missing(_: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(
            {"error": str(exc.args[0]) if exc.args else "not found"}, status_code=404
        )

    @api.exception_handler(Conflict)
    async def _conflict(_: Request, exc: Conflict) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=409)

    @api.exception_handler(Forbidden)
    async def _forbidden(_: Request, exc: Forbidden) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=403)

    @api.exception_handler(_Unauthorized)
    async def _unauthorized(_: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(
            {"error": "missing, invalid or revoked bearer token"},
            status_code=401,
            headers={"www-authenticate": "Bearer"},
        )

    @api.get("/healthz", response_class=PlainTextResponse)
    async def healthz() -> str:
        return "OK"

    @api.get("/metrics", response_class=PlainTextResponse)
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @api.get("/system/info")
    async def info(_: Principal = Depends(principal)) -> dict[str, Any]:
        return platform.info()

    @api.get("/system/functions")
    async def list_functions(
        namespace: str | None = None, who: Principal = Depends(principal)
    ) -> list[dict[str, Any]]:
        return [function_status(platform, r) for r in platform.list(who, namespace)]

    async def _deploy(body: Deployment, who: Principal, mode: str) -> JSONResponse:
        name = body.name or body.service
        if not name:
            raise SpecError(("name",), "missing function name")
        record = await platform.deploy(who, name, body.namespace, body.spec, body.bundle, mode)
        return JSONResponse(function_status(platform, record), status_code=202)

    @api.post("/system/functions", status_code=202)
    async def create_function(
        body: Deployment, who: Principal = Depends(principal)
    ) -> JSONResponse:
        return await _deploy(body, who, "create")

    @api.put("/system/functions", status_code=202)
    async def update_function(
        body: Deployment, who: Principal = Depends(principal)
    ) -> JSONResponse:
        return await _deploy(body, who, "update")

    @api.delete("/system/functions", status_code=202)
    async def delete_function(
        body: DeleteFunction, who: Principal = Depends(principal)
    ) -> JSONResponse:
        await platform.remove(who, body.functionName, body.namespace)
        return JSONResponse({"deleted": body.functionName}, status_code=202)

    @api.get("/system/function/{name}")
    async def describe_function(
        name: str, namespace: str | None = None, who: Principal = Depends(principal)
    ) -> dict[str, Any]:
        return function_status(platform, platform.lookup(who, name, namespace), detail=True)

    @api.post("/system/scale-function/{name}", status_code=202)
    async def scale_function(
        name: str, body: ScaleRequest, who: Principal = Depends(principal)
    ) -> JSONResponse:
        await platform.scale(who, name, body.namespace, body.replicas)
        return JSONResponse({"name": name, "replicas": body.replicas}, status_code=202)

    @api.post("/system/wake-function/{name}", status_code=202)
    async def wake_function(
        name: str, namespace: str | None = None, who: Principal = Depends(principal)
    ) -> JSONResponse:
        """Start an instance of a function at zero in the background, ahead of calls about to
        come; an instance running or starting already is enough (``started``: false)."""
        started = platform.wake(who, name, namespace)
        return JSONResponse({"name": name, "started": started}, status_code=202)

    @api.get("/system/logs")
    async def logs(
        name: str,
        namespace: str | None = None,
        tail: int = Query(100, ge=0, le=2000),
        since: float = 0.0,
        follow: bool = False,
        who: Principal = Depends(principal),
    ) -> StreamingResponse:
        record = platform.lookup(who, name, namespace)
        key = (record.namespace, name)
        book = platform.agent.logs
        queue = book.follow(key) if follow else None
        backlog = book.tail(key, tail, since)

        async def lines() -> AsyncIterator[bytes]:
            try:
                for line in backlog:
                    yield (json.dumps(line.to_dict()) + "\n").encode()
                while queue is not None:
                    try:
                        line = await asyncio.wait_for(queue.get(), 15)
                    except TimeoutError:
                        yield b"\n"  # keep-alive; lets us notice a gone client
                        continue
                    yield (json.dumps(line.to_dict()) + "\n").encode()
            finally:
                if queue is not None:
                    book.unfollow(key, queue)

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    @api.post("/system/bundles", status_code=201)
    async def upload_bundle(request: Request, _: Principal = Depends(principal)) -> JSONResponse:
        data = await request.body()
        sha256 = await platform.upload_bundle(data)
        return JSONResponse({"sha256": sha256, "size": len(data)}, status_code=201)

    def visible(who: Principal) -> set[str] | None:
        return None if who.is_admin else {who.namespace}

    @api.exception_handler(CallNotFound)
    @api.exception_handler(TopicNotFound)
    async def _gone(_: Request, exc: Exception) -> JSONResponse:
        what = "topic" if isinstance(exc, TopicNotFound) else "call"
        text = str(exc.args[0]) if exc.args else "not found"
        return JSONResponse(
            {"error": text if what == "topic" else f"call {text!r} not found"}, status_code=404
        )

    @api.exception_handler(CallStateConflict)
    @api.exception_handler(TopicConflict)
    async def _state(_: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=409)

    @api.exception_handler(TopicError)
    async def _topic(_: Request, exc: TopicError) -> JSONResponse:
        return JSONResponse({"error": str(exc), "field": exc.field}, status_code=400)

    @api.get("/system/calls")
    async def list_calls(
        function: str | None = None,
        namespace: str | None = None,
        state: str | None = Query(None, pattern="^(" + "|".join(CALL_STATES) + ")$"),
        limit: int = Query(100, ge=1, le=10000),
        who: Principal = Depends(principal),
    ) -> list[dict[str, Any]]:
        key = None
        if function is not None:
            record = platform.lookup(who, function, namespace)
            key = (record.namespace, function)
        calls = await platform.events.calls.list(visible(who), key, state, limit)
        return [c.to_dict() for c in calls]

    @api.get("/system/calls/{call_id}")
    async def show_call(call_id: str, who: Principal = Depends(principal)) -> dict[str, Any]:
        return (await platform.events.calls.show(call_id, visible(who))).to_dict()

    @api.post("/system/calls/{call_id}/replay", status_code=202)
    async def replay_call(call_id: str, who: Principal = Depends(principal)) -> JSONResponse:
        record = await platform.events.calls.replay(call_id, visible(who))
        return JSONResponse(record.to_dict(), status_code=202)

    @api.delete("/system/calls/{call_id}")
    async def cancel_call(call_id: str, who: Principal = Depends(principal)) -> dict[str, Any]:
        return (await platform.events.calls.cancel(call_id, visible(who))).to_dict()

    @api.get("/system/topics")
    async def list_topics(
        namespace: str | None = None, who: Principal = Depends(principal)
    ) -> list[dict[str, Any]]:
        if namespace is None:
            return await platform.events.topics.all(visible(who))
        return await platform.events.topics.all({platform.namespace_for(who, namespace)})

    @api.post("/system/topics", status_code=201)
    async def create_topic(body: TopicBody, who: Principal = Depends(principal)) -> JSONResponse:
        owner = platform.namespace_for(who, body.namespace)
        topic = topic_from_request(body.name, body.settings(), owner)
        created = await platform.events.router.create_topic(platform.events.topics, topic)
        return JSONResponse(created, status_code=201)

    @api.get("/system/topics/{name}")
    async def describe_topic(name: str, who: Principal = Depends(principal)) -> dict[str, Any]:
        return await platform.events.topics.get(name, visible(who))

    @api.put("/system/topics/{name}")
    async def update_topic(
        name: str, body: TopicSettings, who: Principal = Depends(principal)
    ) -> dict[str, Any]:
        # the owner is kept: update() takes it from the topic as it is
        topic = topic_from_request(name, body.settings(), DEFAULT_NAMESPACE)
        updated = await platform.events.topics.update(topic, visible(who))
        await platform.events.router.refresh()
        return updated

    @api.post("/system/topics/{name}/messages", status_code=201)
    async def publish_to_topic(
        name: str,
        request: Request,
        subject: str | None = None,
        who: Principal = Depends(principal),
    ) -> JSONResponse:
        """Publish the request body; ``X-Msg-Id`` makes a re-sent message count once."""
        data = await request.body()
        msg_id = request.headers.get("x-msg-id")
        stored = await platform.events.topics.publish(name, data, subject, msg_id, visible(who))
        return JSONResponse(stored, status_code=201)

    @api.get("/system/topics/{name}/messages")
    async def read_topic(
        name: str,
        subject: str | None = None,
        start_seq: int = Query(1, ge=1),
        limit: int = Query(100, ge=1, le=1000),
        who: Principal = Depends(principal),
    ) -> list[dict[str, Any]]:
        return await platform.events.topics.read(name, subject, start_seq, limit, visible(who))

    @api.delete("/system/topics/{name}", status_code=204)
    async def delete_topic(name: str, who: Principal = Depends(principal)) -> Response:
        await platform.events.topics.delete(name, visible(who))
        await platform.events.router.refresh()
        return Response(status_code=204)

    @api.get("/system/tokens")
    async def list_tokens(_: Principal = Depends(admin)) -> list[dict[str, Any]]:
        return platform.tokens.list()

    @api.post("/system/tokens", status_code=201)
    async def create_token(body: TokenRequest, _: Principal = Depends(admin)) -> JSONResponse:
        if body.namespace != ALL_NAMESPACES:
            validate_name(body.namespace, ("namespace",))
        token_id, token = platform.tokens.create(body.namespace)
        return JSONResponse(
            {"id": token_id, "namespace": body.namespace, "token": token}, status_code=201
        )

    @api.delete("/system/tokens/{token_id}", status_code=204)
    async def revoke_token(token_id: str, _: Principal = Depends(admin)) -> Response:
        if not platform.tokens.revoke(token_id):
            raise NotFound(f"token {token_id!r} not found")
        return Response(status_code=204)

    api.openapi = lambda: _openapi_with_invoke(api)  # type: ignore[method-assign]

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith((PREFIX, ASYNC_PREFIX)):
            await gateway(scope, receive, send)
        else:
            await api(scope, receive, send)

    app.platform = platform  # type: ignore[attr-defined]
    return app


class _Unauthorized(Exception):
    pass


def _openapi_with_invoke(api: FastAPI) -> dict[str, Any]:
    """FastAPI's document plus the raw invoke path, which the framework never routes."""
    if api.openapi_schema:
        return api.openapi_schema
    from fastapi.openapi.utils import get_openapi

    schema = get_openapi(title=api.title, version=api.version, routes=api.routes)
    operation = {
        "summary": "Invoke a function synchronously",
        "parameters": [
            {
                "name": "name",
                "in": "path",
                "required": True,
                "schema": {"type": "string", "pattern": NAME_RE.pattern},
                "description": "function name, optionally suffixed with .namespace",
            }
        ],
        "requestBody": {"content": {"*/*": {"schema": {"type": "string", "format": "binary"}}}},
        "responses": {
            code: {"description": text}
            for code, text in {
                "200": "the function's response (any status the handler returns)",
                "401": "token missing for a private function, or invalid",
                "404": "no such function",
                "413": "body larger than max_body",
                "429": "at capacity; see Retry-After",
                "500": "handler raised, or failed to load",
                "502": "instance died during the request",
                "503": "instances are failing to start",
                "504": "timeout",
            }.items()
        },
    }
    schema["paths"]["/function/{name}"] = {
        method: {**operation, "operationId": f"invoke_{method}"}
        for method in ("get", "post", "put", "delete", "patch")
    }
    api.openapi_schema = schema
    return schema
