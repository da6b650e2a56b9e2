"""Helpers of the server tests: polling history, free ports, a `sd35 serve` subprocess, uvicorn in a thread."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import uvicorn

BASE = "http://127.0.0.1:8188"
WS_BASE = "ws://127.0.0.1:8188"


def wait_history(get: Callable[[str], Any], prompt_id: str, timeout: float = 60.0) -> dict[str, Any]:
    """Poll GET /history/{id} until the prompt is there; returns its entry."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = get(f"/history/{prompt_id}").json()
        if prompt_id in body:
            return body[prompt_id]
        time.sleep(0.05)
    raise AssertionError(f"prompt {prompt_id} not in history after {timeout}s")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LiveServer:
    """A running `sd35 serve` subprocess: base URL, folders, and its log file."""

    def __init__(self, root: Path, models: Path, token: str | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}"
        self.output = root / "output"
        self.input = root / "input"
        self.log_path = root / "server.log"
        argv = [sys.executable, "-m", "sd35.cli.main", "serve", "--port", str(self.port), "--models", str(models)]
        argv += ["--output-dir", str(self.output), "--input-dir", str(self.input), "--temp-dir", str(root / "temp")]
        if token:
            argv += ["--auth-token", token]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self._log = self.log_path.open("w")
        self.process = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        self._wait_ready(token)

    def _wait_ready(self, token: str | None, timeout: float = 90.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"sd35 serve exited early:\n{self.log_path.read_text()[-4000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/prompt", headers=headers, timeout=2).status_code == 200:
                    return
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"sd35 serve did not start in {timeout}s:\n{self.log_path.read_text()[-4000:]}")

    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self) -> int | None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._log.close()
        return self.process.returncode


class ThreadServer:
    """uvicorn serving an app in a background thread on a free loopback port (a real HTTP server,
    in-process: used for the fuzz run on the toy registry)."""

    def __init__(self, app: Any) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", ws="auto")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="uvicorn-test", daemon=True)

    def __enter__(self) -> ThreadServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)
