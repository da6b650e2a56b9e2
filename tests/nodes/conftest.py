"""Fixtures for the node tests: the tiny models in ComfyUI's folder layout, Services and a registry."""

from __future__ import annotations

from pathlib import Path

import pytest
from nodes_support import SHARED, make_comfy_models

from sd35.nodes import ModelFolders, Services, build_registry
from sd35.workflow import NodeRegistry


@pytest.fixture(scope="session")
def comfy_models(tmp_path_factory: pytest.TempPathFactory, tiny_model_paths: dict[str, Path]) -> Path:
    return make_comfy_models(tmp_path_factory.mktemp("comfy_models"), tiny_model_paths)


@pytest.fixture(scope="session")
def shared_services(comfy_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Services:
    """One Services for the whole session, so loaded models are shared between tests (read-only use)."""
    out = tmp_path_factory.mktemp("shared_out")
    return Services(ModelFolders((comfy_models,)), out / "output", input_dir=out / "input")


@pytest.fixture
def services(shared_services: Services, tmp_path: Path) -> Services:
    """Fresh folders per test, but the session's model store and conditioning cache."""
    (tmp_path / "input").mkdir()
    return Services(
        shared_services.models,
        tmp_path / "output",
        input_dir=tmp_path / "input",
        store=shared_services.store,
        conditioning_cache=shared_services.conditioning_cache,
    )


@pytest.fixture
def registry(services: Services) -> NodeRegistry:
    return build_registry(services)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not (SHARED / "workflows").is_dir():
        pytest.skip(f"the shared workflows folder {SHARED / 'workflows'} is not present")
    return SHARED
