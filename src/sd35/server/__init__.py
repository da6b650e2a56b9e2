"""`sd35 serve`: a ComfyUI-compatible HTTP/WebSocket server with a small web page (docs/server.md).

`create_app(services, registry=None, config=ServerConfig(...))` builds the FastAPI application; the
PromptQueue's one worker thread runs prompts with the workflow engine. Importing this package does not
import FastAPI: the names below are loaded on first use."""

from __future__ import annotations

from typing import Any

__all__ = ["ServerConfig", "create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from .app import create_app

        return create_app
    if name == "ServerConfig":
        from .state import ServerConfig

        return ServerConfig
    raise AttributeError(name)
