"""API tests against a real `sd35 serve` process on a free port with the tiny model (real nodes): submit,
WebSocket progress, history, view the image, interrupt, queue clear, upload then img2img."""

from __future__ import annotations

import io
import json
import time
from typing import Any

import httpx
import pytest
from PIL import Image
from server_helpers import LiveServer, wait_history
from server_toys import official_prompt
from websockets.sync.client import connect


def _messages_until_done(ws: Any, prompt_id: str, timeout: float = 120.0) -> list[dict[str, Any]]:
    """WebSocket messages up to and including `executing {node: null}` of `prompt_id`."""
    out: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        message = json.loads(ws.recv(timeout=max(0.1, deadline - time.monotonic())))
        out.append(message)
        data = message["data"]
        if message["type"] == "executing" and data["node"] is None and data.get("prompt_id") == prompt_id:
            return out
    raise AssertionError(f"no end of {prompt_id} on the websocket; got {[m['type'] for m in out]}")


def _post(server: LiveServer, path: str, **kw: Any) -> httpx.Response:
    return httpx.post(server.url + path, timeout=30, **kw)


def _get(server: LiveServer, path: str, **kw: Any) -> httpx.Response:
    return httpx.get(server.url + path, timeout=30, **kw)


def test_submit_progress_history_and_view(live_server: LiveServer) -> None:
    prompt = official_prompt(steps=3, size=64, seed=7)
    with connect(f"{live_server.ws_url}/ws?clientId=api-test") as ws:
        hello = json.loads(ws.recv(timeout=10))
        assert hello["type"] == "status" and hello["data"]["sid"] == "api-test"
        extra = {"extra_pnginfo": {"workflow": {"note": "api-test"}}}
        answer = _post(live_server, "/prompt", json={"prompt": prompt, "client_id": "api-test", "extra_data": extra})
        assert answer.status_code == 200, answer.text
        prompt_id = answer.json()["prompt_id"]
        messages = _messages_until_done(ws, prompt_id)
    kinds = [m["type"] for m in messages]
    assert kinds.index("execution_start") < kinds.index("progress") < kinds.index("execution_success")
    progress = [(m["data"]["value"], m["data"]["max"], m["data"]["node"]) for m in messages if m["type"] == "progress"]
    assert [(v, m) for v, m, n in progress if n == "294"] == [(1, 3), (2, 3), (3, 3)]
    executed = next(m["data"] for m in messages if m["type"] == "executed")
    assert executed["node"] == "9" and executed["prompt_id"] == prompt_id
    entry = wait_history(lambda p: _get(live_server, p), prompt_id)
    assert entry["status"] == {"status_str": "success", "completed": True, "messages": entry["status"]["messages"]}
    image = entry["outputs"]["9"]["images"][0]
    assert image == executed["output"]["images"][0] and image["type"] == "output"
    view = _get(live_server, "/view", params=image)
    assert view.status_code == 200 and view.headers["content-type"] == "image/png"
    png = Image.open(io.BytesIO(view.content))
    assert png.size == (64, 64)
    assert json.loads(png.text["prompt"])["294"]["inputs"]["seed"] == 7
    assert json.loads(png.text["workflow"]) == {"note": "api-test"}  # extra_pnginfo reaches SaveImage
    assert (live_server.output / image["subfolder"] / image["filename"]).is_file()


def test_interrupt_and_queue_clear(live_server: LiveServer) -> None:
    long = official_prompt(steps=400, size=64, seed=1)
    with connect(f"{live_server.ws_url}/ws?clientId=interrupt-test") as ws:
        json.loads(ws.recv(timeout=10))
        first = _post(live_server, "/prompt", json={"prompt": long, "client_id": "interrupt-test"}).json()
        more = [{"prompt": official_prompt(steps=400, seed=s)} for s in (2, 3)]
        queued = [_post(live_server, "/prompt", json=body).json() for body in more]
        while True:  # wait until the first prompt is sampling
            message = json.loads(ws.recv(timeout=120))
            if message["type"] == "progress" and message["data"]["node"] == "294":
                break
        queue = _get(live_server, "/queue").json()
        assert [e[1] for e in queue["queue_running"]] == [first["prompt_id"]]
        assert [e[1] for e in queue["queue_pending"]] == [q["prompt_id"] for q in queued]
        cleared = _post(live_server, "/queue", json={"clear": True}).json()["deleted"]
        assert cleared == [q["prompt_id"] for q in queued]
        assert _post(live_server, "/interrupt").json() == {"interrupted": True}
        messages = _messages_until_done(ws, first["prompt_id"])
    interrupted = next(m["data"] for m in messages if m["type"] == "execution_interrupted")
    assert interrupted["node_id"] == "294" and interrupted["node_type"] == "KSampler"
    entry = wait_history(lambda p: _get(live_server, p), first["prompt_id"])
    assert entry["status"]["status_str"] == "error" and entry["status"]["messages"][-1][0] == "execution_interrupted"
    assert _get(live_server, "/queue").json() == {"queue_running": [], "queue_pending": []}
    history = _get(live_server, "/history").json()
    assert not any(q["prompt_id"] in history for q in queued)


def _png_bytes(size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    gradient = Image.linear_gradient("L").resize(size).convert("RGB")
    gradient.save(buffer, format="PNG")
    return buffer.getvalue()


def test_upload_then_img2img(live_server: LiveServer) -> None:
    files = {"image": ("init.png", _png_bytes((64, 48)), "image/png")}
    uploaded = _post(live_server, "/upload/image", files=files, data={"subfolder": ""}).json()
    assert uploaded == {"name": "init.png", "subfolder": "", "type": "input"}
    info = _get(live_server, "/object_info/LoadImage").json()
    assert "init.png" in info["LoadImage"]["input"]["required"]["image"][0]
    prompt = official_prompt(steps=2, seed=3)
    del prompt["135"]
    prompt["20"] = {"class_type": "LoadImage", "inputs": {"image": "init.png"}}
    prompt["21"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["20", 0], "vae": ["4", 2]}}
    prompt["294"]["inputs"].update(latent_image=["21", 0], denoise=0.6)
    answer = _post(live_server, "/prompt", json={"prompt": prompt})
    assert answer.status_code == 200, answer.text
    entry = wait_history(lambda p: _get(live_server, p), answer.json()["prompt_id"])
    assert entry["status"]["status_str"] == "success", entry["status"]
    image = entry["outputs"]["9"]["images"][0]
    assert Image.open(io.BytesIO(_get(live_server, "/view", params=image).content)).size == (64, 48)


def test_validation_error_and_failing_prompt_with_real_nodes(live_server: LiveServer) -> None:
    prompt = official_prompt()
    prompt["294"]["inputs"]["sampler_name"] = "not_a_sampler"
    answer = _post(live_server, "/prompt", json={"prompt": prompt})
    assert answer.status_code == 400
    error = answer.json()["node_errors"]["294"]["errors"][0]
    assert error["type"] == "value_not_in_list" and error["extra_info"]["received_value"] == "not_a_sampler"
    missing = official_prompt()
    missing["4"]["inputs"]["ckpt_name"] = "missing.safetensors"
    assert _post(live_server, "/prompt", json={"prompt": missing}).status_code == 400
    for path in ("/view?filename=../server.log", "/view?filename=x&subfolder=..", "/models/nope", "/nope"):
        answer = _get(live_server, path)
        assert 400 <= answer.status_code < 500 and "error" in answer.json(), path


def test_models_and_system_stats(live_server: LiveServer) -> None:
    assert "checkpoints" in _get(live_server, "/models").json()
    assert "sd3.5_medium.safetensors" in _get(live_server, "/models/checkpoints").json()
    stats = _get(live_server, "/system_stats").json()
    assert stats["devices"][0]["type"] in ("cpu", "cuda") and stats["system"]["python_version"]


@pytest.mark.parametrize("path", ["/", "/object_info", "/openapi.json"])
def test_refuses_foreign_hosts(live_server: LiveServer, path: str) -> None:
    assert _get(live_server, path, headers={"host": "attacker.example"}).status_code == 403
