"""Fixtures of the server tests: an in-process app on the toy registry (fast), and one real `sd35 serve`
subprocess on the tiny model shared by the API, client-library and browser tests."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from server_helpers import BASE, LiveServer
from server_toys import toy_registry, toy_services

from sd35.server import ServerConfig, create_app


@pytest.fixture
def make_client(tmp_path: Path) -> Iterator[Callable[..., TestClient]]:
    """make_client(step_delay=0.0, **ServerConfig fields) -> a started TestClient on the toy registry."""
    stack = contextlib.ExitStack()

    def make(step_delay: float = 0.0, **config: Any) -> TestClient:
        services = toy_services(tmp_path)
        app = create_app(services, toy_registry(services, step_delay=step_delay), config=ServerConfig(**config))
        client = TestClient(app, base_url=BASE)
        client.services = services  # type: ignore[attr-defined]
        return stack.enter_context(client)

    with stack:
        yield make


@pytest.fixture
def client(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client()


@pytest.fixture(scope="session")
def live_server(tmp_path_factory: pytest.TempPathFactory, tiny_models_dir: Path) -> Iterator[LiveServer]:
    """One `sd35 serve` process on the tiny models for the whole session (fresh output/input folders)."""
    nodes = pytest.importorskip("sd35.nodes", reason="the real nodes (sd35.nodes) are not there")
    if not hasattr(nodes, "build_registry"):
        pytest.skip("sd35.nodes.build_registry is not there")
    server = LiveServer(tmp_path_factory.mktemp("live_server"), tiny_models_dir)
    try:
        yield server
    finally:
        server.stop()
