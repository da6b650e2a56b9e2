"""create_app(services, ...): the FastAPI application of `sd35 serve`, a ComfyUI-compatible HTTP/WebSocket
API plus a web page. Thin: routes validate requests and hand prompts to the PromptQueue, whose one
worker thread runs the workflow engine. Every route also answers under /api (as ComfyUI's do).
The OpenAPI description is at /openapi.json (interactive docs at /docs)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from sd35 import __version__
from sd35.workflow import NodeRegistry, OutputCache

from . import routes_files, routes_info, routes_page, routes_queue, routes_ws
from .history import HistoryStore
from .hub import Hub
from .queue import PromptQueue
from .security import SecurityMiddleware, error_body
from .state import ServerConfig, ServerState, folders_of

log = logging.getLogger(__name__)
ROUTERS = (routes_queue.router, routes_files.router, routes_info.router, routes_page.router, routes_ws.router)
HTTP_KINDS = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "too_large", 415: "unsupported"}


def _validation_details(exc: RequestValidationError) -> list[dict[str, Any]]:
    out = []
    for error in exc.errors()[:20]:
        out.append({"loc": [str(p) for p in error.get("loc", ())], "msg": str(error.get("msg", ""))[:300]})
    return out


def _install_error_handlers(app: FastAPI) -> None:
    """Every refusal is a JSON 4xx; an unexpected failure is a JSON 500 without traceback (logged)."""

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        details = _validation_details(exc)
        summary = "; ".join(f"{'.'.join(d['loc'])}: {d['msg']}" for d in details[:3])
        body = error_body("invalid_request", f"Invalid request: {summary}" if summary else "Invalid request")
        body["error"]["extra_info"] = {"errors": details}
        if request.url.path.endswith("/prompt"):
            body["error"]["type"] = "invalid_prompt"
            body["node_errors"] = {}
        return JSONResponse(body, status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "request refused"
        kind = HTTP_KINDS.get(exc.status_code, "error")
        return JSONResponse(error_body(kind, message), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return JSONResponse(error_body("internal_error", "internal server error (see the server log)"), 500)


def _default_registry(services: Any) -> NodeRegistry:
    from sd35.nodes import build_registry

    return build_registry(services)


def _unloader(services: Any) -> Callable[[], None] | None:
    for owner in (getattr(services, "store", None), getattr(services, "model_store", None)):
        for name in ("clear", "unload_all"):
            method = getattr(owner, name, None)
            if callable(method):
                return method
    return None


def create_app(services: Any, registry: NodeRegistry | None = None, *, config: ServerConfig | None = None) -> FastAPI:
    """The application. `services` provides output_dir, input_dir and temp_dir (sd35.nodes.Services);
    `registry` defaults to `sd35.nodes.build_registry(services)`. The worker thread starts and stops
    with the application's lifespan (uvicorn, or `with TestClient(app)`)."""
    config = config or ServerConfig()
    registry = registry if registry is not None else _default_registry(services)
    hub = Hub()
    cache = OutputCache(max_entries=config.cache_entries) if config.cache_entries is not None else OutputCache()
    queue = PromptQueue(
        registry,
        history=HistoryStore(config.history_size),
        cache=cache,
        publish=hub.publish,
        unload_models=_unloader(services),
    )
    state = ServerState(config, services, registry, queue, hub, folders_of(services))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        for folder in (state.folders.output, state.folders.input, state.folders.temp):
            folder.mkdir(parents=True, exist_ok=True)
        hub.bind(asyncio.get_running_loop())
        queue.start()
        try:
            yield
        finally:
            await run_in_threadpool(queue.stop)  # interrupts the running prompt, which is recorded
            hub.close_all()
            await asyncio.sleep(0)
            hub.bind(None)

    app = FastAPI(
        title="sd35 serve",
        version=__version__,
        description="ComfyUI-compatible API of the sd35 engine (Stable Diffusion 3.5 Medium).",
        lifespan=lifespan,
    )
    app.state.sd35 = state
    _install_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
        app.include_router(router, prefix="/api", include_in_schema=False)
    app.mount("/static", StaticFiles(directory=routes_page.STATIC_DIR), name="static")
    app.add_middleware(
        SecurityMiddleware,
        token=config.auth_token,
        loopback_only=config.loopback_only,
        max_body_bytes=config.max_body_bytes,
    )
    return app
