"""A bounded fuzz run over the OpenAPI description (schemathesis) against a real uvicorn server on the toy
registry: no generated request may get a 5xx."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from server_helpers import ThreadServer
from server_toys import toy_registry, toy_services

from sd35.server import ServerConfig, create_app


def test_openapi_fuzz_gives_no_server_errors(tmp_path: Path) -> None:
    cli = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    if cli is None:
        pytest.skip("schemathesis is not installed (pip install -e '.[test]')")
    services = toy_services(tmp_path / "data")
    app = create_app(services, toy_registry(services), config=ServerConfig(max_body_bytes=1 << 20))
    with ThreadServer(app) as server:
        argv = [cli, "run", f"{server.url}/openapi.json", "--checks", "not_a_server_error"]
        argv += ["--max-examples", "12", "--seed", "1", "--workers", "1", "--generation-database", "none"]
        argv += ["--phases", "examples,coverage,fuzzing", "--max-time", "15", "--request-timeout", "10"]
        argv += ["--no-color", "--suppress-health-check", "all"]
        result = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=120)
        report = result.stdout[-6000:] + result.stderr[-2000:]
        operations = app.openapi()["paths"]
    assert result.returncode == 0, report
    assert "/prompt" in operations and "/upload/image" in operations and "/view" in operations
    counts = re.search(r"(\d+) generated, (\d+) passed", report)
    assert counts and int(counts[1]) == int(counts[2]) > 100, report
