"""PromptQueue and the queue routes on the toy registry: order, front, delete/clear, interrupt, failures
recorded in history while the queue goes on, and 50 prompts with an interrupt and a clear in between."""

from __future__ import annotations

import json
import time
from pathlib import Path

from server_helpers import WS_BASE, wait_history
from server_toys import SAMPLES, official_prompt, toy_registry, toy_services

from sd35.server.queue import PromptQueue, QueueItem
from sd35.workflow import CancelToken


def _item(number: int, prompt_id: str, **kw: object) -> QueueItem:
    return QueueItem(number, prompt_id, official_prompt(**kw), {}, ["9"])


def test_runs_in_number_order_front_first_and_records_each(tmp_path: Path) -> None:
    services = toy_services(tmp_path)
    sent: list[tuple[dict, str | None]] = []
    queue = PromptQueue(toy_registry(services), publish=lambda m, sid: sent.append((m, sid)))
    for number, prompt_id in [(2, "c"), (0, "a"), (1, "b"), (-3, "front")]:
        queue.put(_item(number, prompt_id, seed=number + 10))
    assert [i.prompt_id for i in queue.snapshot()[1]] == ["front", "a", "b", "c"]
    assert queue.remaining() == 4
    queue.start()
    try:
        assert queue.wait_idle(30)
    finally:
        queue.stop()
    assert queue.history.ids() == ["front", "a", "b", "c"]
    starts = [m["data"]["prompt_id"] for m, _ in sent if m["type"] == "execution_start"]
    assert starts == ["front", "a", "b", "c"]
    # history is written before `executing: null` and the last status broadcast says the queue is empty
    assert sent[-1][0] == {"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}}}}


def test_history_entry_has_comfyuis_shape(tmp_path: Path) -> None:
    services = toy_services(tmp_path)
    queue = PromptQueue(toy_registry(services))
    item = QueueItem(11, "p1", official_prompt(), {"client_id": "c1", "extra_pnginfo": {"workflow": {}}}, ["9"])
    assert queue.run_item(item, CancelToken()) == "success"
    entry = queue.history.get("p1")["p1"]
    sample = next(iter(json.loads((SAMPLES / "history_one_prompt.json").read_text()).values()))
    assert set(entry) == set(sample)
    assert set(entry["status"]) == set(sample["status"])
    assert entry["prompt"][:2] == [11, "p1"] and entry["prompt"][3]["client_id"] == "c1" and entry["prompt"][4] == ["9"]
    assert entry["status"]["status_str"] == "success" and entry["status"]["completed"] is True
    assert [m[0] for m in entry["status"]["messages"]] == ["execution_start", "execution_cached", "execution_success"]
    assert entry["outputs"]["9"]["images"][0]["filename"] == "sd35_00001_.png"
    assert set(entry["meta"]["9"]) == set(sample["meta"]["900"])
    assert (services.output_dir / "sd35_00001_.png").is_file()


def test_failing_prompt_is_recorded_and_the_queue_goes_on(client) -> None:
    bad = official_prompt()
    bad["6"]["inputs"]["text"] = "FAIL"
    with client.websocket_connect(f"{WS_BASE}/ws?clientId=f") as ws:
        ws.receive_json()
        body = {"prompt": bad, "client_id": "f"}
        ids = [client.post("/prompt", json=body).json()["prompt_id"]]
        ids.append(client.post("/prompt", json={"prompt": official_prompt(seed=5)}).json()["prompt_id"])
        messages = [ws.receive_json()]
        while not (messages[-1]["type"] == "executing" and messages[-1]["data"]["node"] is None):
            messages.append(ws.receive_json())
    sent = next(m["data"] for m in messages if m["type"] == "execution_error")
    assert sent["prompt_id"] == ids[0] and sent["node_type"] == "CLIPTextEncode"
    failed, good = (wait_history(client.get, i) for i in ids)
    assert failed["status"]["status_str"] == "error" and failed["status"]["completed"] is False
    error = [m[1] for m in failed["status"]["messages"] if m[0] == "execution_error"][0]
    assert error["node_id"] == "6" and "toy failure" in error["exception_message"] and error["traceback"] == []
    assert good["status"]["status_str"] == "success" and good["outputs"]["9"]["images"]


def test_interrupt_stops_the_running_prompt_only(make_client) -> None:
    client = make_client(step_delay=0.05)
    slow = client.post("/prompt", json={"prompt": official_prompt(steps=200)}).json()["prompt_id"]
    nxt = client.post("/prompt", json={"prompt": official_prompt(steps=1, seed=2)}).json()["prompt_id"]
    deadline = time.monotonic() + 10
    while not client.get("/queue").json()["queue_running"] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert client.post("/interrupt", json={"prompt_id": "someone-else"}).json() == {"interrupted": False}
    assert client.post("/interrupt").json() == {"interrupted": True}
    entry = wait_history(client.get, slow)
    kinds = [m[0] for m in entry["status"]["messages"]]
    assert kinds[-1] == "execution_interrupted" and entry["status"]["status_str"] == "error"
    assert wait_history(client.get, nxt)["status"]["status_str"] == "success"


def test_queue_lists_deletes_and_clears_pending(make_client) -> None:
    client = make_client(step_delay=0.05)
    ids = [
        client.post("/prompt", json={"prompt": official_prompt(steps=40, seed=s)}).json()["prompt_id"] for s in range(4)
    ]
    queue = client.get("/queue").json()
    listed = [e[1] for e in queue["queue_running"] + queue["queue_pending"]]
    assert listed == ids and all(len(e) == 5 for e in queue["queue_pending"])
    assert client.post("/queue", json={"delete": [ids[3]]}).json() == {"deleted": [ids[3]]}
    cleared = client.post("/queue", json={"clear": True}).json()["deleted"]
    assert set(cleared) <= {ids[1], ids[2]} and client.get("/queue").json()["queue_pending"] == []
    client.post("/interrupt")
    assert client.app.state.sd35.queue.wait_idle(10)
    assert ids[3] not in client.get("/history").json()


def _interrupt_a_running_prompt(client) -> str:  # noqa: ANN001
    """Interrupt the running prompt until one is recorded as interrupted; returns its id. An interrupt that
    lands after the last node's cancellation check lets that prompt finish (ComfyUI behaves the same), so
    under load one try may not be enough."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        running = client.get("/queue").json()["queue_running"]
        signalled = running and client.post("/interrupt", json={"prompt_id": running[0][1]}).json()["interrupted"]
        if signalled and wait_history(client.get, running[0][1])["status"]["status_str"] == "error":
            return running[0][1]
        time.sleep(0.001)
    raise AssertionError("no running prompt could be interrupted")


def test_fifty_prompts_with_an_interrupt_and_a_clear_lose_nothing(make_client) -> None:
    client = make_client(step_delay=0.02)  # slow enough that the clear at i == 35 finds pending prompts
    with client.websocket_connect(f"{WS_BASE}/ws?clientId=stress") as ws:
        ws.receive_json()  # status on connect
        ids, removed, targets = [], [], []
        for i in range(50):
            body = {"prompt": official_prompt(steps=3, seed=i), "client_id": "stress"}
            ids.append(client.post("/prompt", json=body).json()["prompt_id"])
            if i == 15:
                targets.append(_interrupt_a_running_prompt(client))
            if i == 35:
                removed = client.post("/queue", json={"clear": True}).json()["deleted"]
        assert client.app.state.sd35.queue.wait_idle(60)
        history = client.get("/history").json()
        assert client.get("/queue").json() == {"queue_running": [], "queue_pending": []}
        assert len(set(ids)) == 50 and not set(removed) & set(history)
        assert set(ids) == set(history) | set(removed), "a prompt was lost"
        assert removed, "the clear removed nothing: the test did not exercise it"
        statuses = {pid: history[pid]["status"] for pid in history}
        interrupted = [p for p, s in statuses.items() if s["messages"][-1][0] == "execution_interrupted"]
        assert interrupted == targets and statuses[targets[0]]["status_str"] == "error"
        assert all(s["status_str"] == "success" for p, s in statuses.items() if p not in interrupted)
        ends: dict[str, int] = {}
        while True:  # every prompt that ran ended exactly once on the websocket (executing: null)
            message = ws.receive_json()
            if message["type"] == "executing" and message["data"]["node"] is None:
                ends[message["data"]["prompt_id"]] = ends.get(message["data"]["prompt_id"], 0) + 1
            if set(ends) == set(history):
                break
        assert set(ends.values()) == {1}
    after = client.post("/prompt", json={"prompt": official_prompt(steps=1, seed=99)}).json()["prompt_id"]
    assert wait_history(client.get, after)["status"]["status_str"] == "success"
