"""The HTTP/WebSocket API in-process on the toy registry: message shapes match ComfyUI's samples, validation
errors come back as ComfyUI returns them, and the info routes answer in ComfyUI's format."""

from __future__ import annotations

import io
import json

from PIL import Image
from server_helpers import WS_BASE, wait_history
from server_toys import SAMPLES, WORKFLOWS, load_json, official_prompt


def test_submit_then_websocket_messages_history_and_view(client) -> None:
    samples = {m["type"]: m["data"] for m in load_json(SAMPLES / "ws_messages_one_per_type.json")}
    with client.websocket_connect(f"{WS_BASE}/ws?clientId=me") as ws:
        hello = ws.receive_json()
        assert hello == {"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}}, "sid": "me"}}
        answer = client.post("/prompt", json={"prompt": official_prompt(steps=3), "client_id": "me"})
        assert answer.status_code == 200
        body = answer.json()
        assert set(body) == set(load_json(SAMPLES / "post_prompt_200.json")["body"]) and body["node_errors"] == {}
        assert isinstance(body["number"], int)
        messages = []
        while not (messages and messages[-1]["type"] == "executing" and messages[-1]["data"]["node"] is None):
            messages.append(ws.receive_json())
    kinds = [m["type"] for m in messages]
    for kind in ("execution_start", "execution_cached", "executing", "progress", "executed", "execution_success"):
        assert kind in kinds, kind
        first = next(m for m in messages if m["type"] == kind)
        assert set(first["data"]) >= set(samples[kind]) - {"timestamp"}, kind
    progress = [(m["data"]["value"], m["data"]["max"]) for m in messages if m["type"] == "progress"]
    assert progress == [(1, 3), (2, 3), (3, 3)]
    entry = wait_history(client.get, body["prompt_id"])
    image = entry["outputs"]["9"]["images"][0]
    view = client.get("/view", params=image)
    assert view.status_code == 200 and view.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(view.content)).size == (64, 64)
    webp = client.get("/view", params={**image, "preview": "webp;80"})
    assert webp.headers["content-type"] == "image/webp"
    assert client.get("/api/history/" + body["prompt_id"]).json() == {body["prompt_id"]: entry}


def test_validation_errors_come_back_as_comfyui_returns_them(client) -> None:
    prompt = official_prompt()
    del prompt["6"]["inputs"]["text"]
    prompt["294"]["inputs"]["sampler_name"] = "not_a_sampler"
    answer = client.post("/prompt", json={"prompt": prompt})
    assert answer.status_code == 400
    expected = load_json(SAMPLES / "post_prompt_400_validation_error.json")["body"]
    body = answer.json()
    assert body["error"] == expected["error"]
    assert body["node_errors"]["6"]["errors"] == expected["node_errors"]["6"]["errors"]
    assert body["node_errors"]["294"]["errors"][0]["type"] == "value_not_in_list"
    assert client.post("/prompt", json={"prompt": {}}).json()["error"]["type"] == "prompt_no_outputs"
    unknown = client.post("/prompt", json={"prompt": {"1": {"class_type": "Nope", "inputs": {}}}})
    assert unknown.status_code == 400 and unknown.json()["error"]["type"] == "invalid_prompt"
    for bad in (b"{not json", b"[]", b'{"prompt": 5}', b'{"prompt": {}, "number": "x"}'):
        answer = client.post("/prompt", content=bad, headers={"content-type": "application/json"})
        assert answer.status_code == 400 and answer.json()["error"]["type"] == "invalid_prompt", bad


def test_prompt_id_number_and_front_are_honoured(make_client) -> None:
    client = make_client(step_delay=0.05)
    first = client.post("/prompt", json={"prompt": official_prompt(steps=20), "prompt_id": "mine"}).json()
    assert first["prompt_id"] == "mine"
    again = client.post("/prompt", json={"prompt": official_prompt(), "prompt_id": "mine"})
    assert again.status_code == 400
    numbered = client.post("/prompt", json={"prompt": official_prompt(seed=3), "number": 1000}).json()
    front = client.post("/prompt", json={"prompt": official_prompt(seed=4), "front": True}).json()
    assert numbered["number"] == 1000 and front["number"] < 0
    pending = [e[1] for e in client.get("/queue").json()["queue_pending"]]
    assert pending == [front["prompt_id"], numbered["prompt_id"]]
    assert client.get("/prompt").json() == {"exec_info": {"queue_remaining": 3}}
    client.post("/queue", json={"clear": True})
    client.post("/interrupt")


def test_object_info_matches_the_registry_and_unknown_is_empty(client) -> None:
    info = client.get("/object_info").json()
    subset = load_json(SAMPLES / "object_info_sd3_subset.json")
    assert set(info) == set(subset)
    assert (
        info["KSampler"]["input"]["required"]["sampler_name"] == subset["KSampler"]["input"]["required"]["sampler_name"]
    )
    assert client.get("/object_info/KSampler").json() == {"KSampler": info["KSampler"]}
    assert client.get("/object_info/NoSuchNode").json() == {}
    assert client.get("/api/object_info/KSampler").json() == {"KSampler": info["KSampler"]}


def test_system_stats_models_and_small_routes(client) -> None:
    stats = client.get("/system_stats").json()
    assert {"os", "ram_total", "ram_free", "comfyui_version", "python_version", "pytorch_version"} <= set(
        stats["system"]
    )
    assert stats["devices"][0]["type"] == "cpu"
    assert isinstance(client.get("/models").json(), list)
    assert client.get("/models/no_such_folder").status_code == 404
    assert client.get("/embeddings").json() == [] and client.get("/extensions").json() == []
    assert client.post("/history", json={"clear": True}).json() == {}
    assert client.post("/free", json={"unload_models": True}).status_code == 200
    assert "/prompt" in client.get("/openapi.json").json()["paths"]
    page = client.get("/")
    assert page.status_code == 200 and "sd35" in page.text and client.get("/static/app.js").status_code == 200


def test_history_paging_follows_comfyui(client) -> None:
    ids = [client.post("/prompt", json={"prompt": official_prompt(seed=s)}).json()["prompt_id"] for s in range(4)]
    for prompt_id in ids:
        wait_history(client.get, prompt_id)
    assert list(client.get("/history").json()) == ids
    assert list(client.get("/history", params={"max_items": 2}).json()) == ids[2:]
    assert list(client.get("/history", params={"max_items": 2, "offset": 1}).json()) == ids[1:3]
    client.post("/history", json={"delete": [ids[0]]})
    assert list(client.get("/history").json()) == ids[1:]


def test_token_counter_warns_past_256_t5_tokens(client) -> None:
    short = client.post("/sd35/tokens", json={"text": "a photo of a cat"}).json()
    assert short["t5xxl"] > 0 and short["over_limit"] is False and short["t5_limit"] == 256
    long = client.post("/sd35/tokens", json={"text": "a photo of a cat " * 80}).json()
    assert long["t5xxl"] > 256 and long["over_limit"] is True and "256" in long["warnings"][0]


def test_reading_dropped_workflows_and_pngs(client) -> None:
    api = (WORKFLOWS / "SD3.5M_example_workflow_api.json").read_bytes()
    read = client.post("/sd35/workflow", content=api).json()
    assert read["source"] == "json" and read["params"]["steps"] == 40 and read["params"]["width"] == 1280
    assert read["params"]["positive"].startswith("beautiful scenery") and read["params"]["negative"] == ""
    ui = client.post("/sd35/workflow", content=(WORKFLOWS / "SD3.5M_example_workflow.json").read_bytes()).json()
    assert ui["params"]["seed"] == 193277626003815 and ui["params"]["sampler_name"] == "dpmpp_2m"
    prompt = official_prompt(seed=77)
    prompt_id = client.post("/prompt", json={"prompt": prompt}).json()["prompt_id"]
    image = wait_history(client.get, prompt_id)["outputs"]["9"]["images"][0]
    png = client.get("/view", params=image).content
    from_png = client.post("/sd35/workflow", content=png).json()
    assert from_png["source"] == "png:prompt" and from_png["params"]["seed"] == 77
    for bad in (b"", b"\x89PNG\r\n\x1a\n", b"not json", json.dumps([1]).encode(), b"\xff\xfe\x00"):
        answer = client.post("/sd35/workflow", content=bad)
        assert answer.status_code == 400 and "error" in answer.json(), bad


def test_gallery_lists_images_with_their_settings(client) -> None:
    prompt = official_prompt(seed=42)
    prompt["300"] = {
        "class_type": "SkipLayerGuidanceSD3",
        "inputs": {"model": ["13", 0], "layers": "7, 8, 9", "scale": 2.5, "start_percent": 0.01, "end_percent": 0.2},
    }
    prompt["294"]["inputs"]["model"] = ["300", 0]
    prompt_id = client.post("/prompt", json={"prompt": prompt}).json()["prompt_id"]
    wait_history(client.get, prompt_id)
    item = client.get("/sd35/gallery").json()["items"][0]
    assert item["prompt_id"] == prompt_id and item["status"] == "success" and item["images"]
    assert item["params"]["seed"] == 42 and item["params"]["slg"] is True and item["params"]["shift"] == 3
