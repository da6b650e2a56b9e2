"""Executor: order and pruning, caching across runs by signature, cancellation, errors, events."""

from __future__ import annotations

import copy
import threading
from typing import Any

import pytest
from wf_toys import SAMPLES, WORKFLOWS, ToyWorld, chain_prompt, link, load_json, sd3_lookalike_registry

from sd35.errors import Cancelled
from sd35.workflow import (
    CancelToken,
    Executed,
    Executing,
    ExecutionCached,
    ExecutionError,
    ExecutionInterrupted,
    ExecutionStart,
    ExecutionSuccess,
    InputSpec,
    NodeExecutionError,
    NodeRegistry,
    NodeSpec,
    OutputCache,
    Progress,
    WorkflowCancelled,
    WorkflowValidationError,
    execute,
)


def _run(world: ToyWorld, prompt: dict, cache: OutputCache | None = None, **kw: Any) -> tuple[Any, list]:
    events: list = []
    world.calls.clear()
    result = execute(
        prompt, world.registry, cache=cache if cache is not None else OutputCache(), events=events.append, **kw
    )
    return result, events


def test_runs_only_what_outputs_need_in_dependency_order() -> None:
    world = ToyWorld()
    result, _ = _run(world, chain_prompt(), prompt_id="p1")
    assert world.calls == ["1", "2", "3", "4", "5", "6", "7", "8"]  # 9 feeds no output: pruned
    assert result.executed == world.calls and result.cached == [] and result.output_nodes == ["6", "8"]
    assert result.outputs["4"] == (50.0,) and result.outputs["5"] == ("50",)
    assert result.ui_outputs == {"6": {"text": ["50"], "prompt_nodes": [9], "id": ["6"]}, "8": {"value": [7.0]}}


def test_event_sequence_and_comfyui_message_shapes() -> None:
    world = ToyWorld()
    prompt = {
        "1": {"class_type": "Number", "inputs": {"value": 1.5}},
        "2": {"class_type": "Slow", "inputs": {"x": link("1"), "steps": 2}},
        "3": {"class_type": "ShowNumber", "inputs": {"x": link("2")}},
    }
    _, events = _run(world, prompt, prompt_id="abc")
    assert [type(e).__name__ for e in events] == [
        "ExecutionStart",
        "ExecutionCached",
        "Executing",
        "Executing",
        "Progress",
        "Progress",
        "Executing",
        "Executed",
        "ExecutionSuccess",
        "Executing",
    ]
    assert [e.node for e in events if isinstance(e, Executing)] == ["1", "2", "3", None]
    assert [(e.value, e.max) for e in events if isinstance(e, Progress)] == [(1, 2), (2, 2)]
    messages = [e.to_comfy_message() for e in events]
    samples = {m["type"]: m["data"] for m in load_json(SAMPLES / "ws_messages_one_per_type.json")}
    for message in messages:
        assert set(message["data"]) == set(samples[message["type"]]), message["type"]
        assert message["data"]["prompt_id"] == "abc"
    assert messages[-3]["data"]["output"] == {"value": [1.5]} and messages[-1]["data"]["node"] is None


def test_cache_reuses_outputs_across_runs_by_signature() -> None:
    world, cache = ToyWorld(), OutputCache()
    _run(world, chain_prompt(), cache)
    result, events = _run(world, chain_prompt(), cache)
    assert world.calls == [] and result.cached == ["1", "2", "3", "4", "5", "6", "7", "8"]
    assert next(e for e in events if isinstance(e, ExecutionCached)).nodes == tuple(result.cached)
    assert [e.node for e in events if isinstance(e, Executed)] == ["6", "8"]  # cached UI is sent again
    assert result.ui_outputs["6"]["text"] == ["50"]

    changed = chain_prompt()
    changed["4"]["inputs"]["factor"] = 0.5  # one literal: that node and what follows re-run
    result, events = _run(world, changed, cache)
    assert world.calls == ["4", "5", "6"] and result.ui_outputs["6"]["text"] == ["2.5"]
    assert next(e for e in events if isinstance(e, ExecutionCached)).nodes == ("1", "2", "3", "7", "8")

    changed["5"]["inputs"]["style"] = "fixed2"
    changed["9"]["inputs"]["b"] = link("2")  # a node no output needs changes nothing
    _run(world, changed, cache)
    assert world.calls == ["5", "6"]


def test_identical_nodes_share_one_computation() -> None:
    world = ToyWorld()
    prompt = chain_prompt()
    prompt["2"]["inputs"]["value"] = 2.0  # now the same as node 1
    result, _ = _run(world, prompt)
    assert "2" not in world.calls and result.cached == ["2"] and result.outputs["4"] == (40.0,)


def test_fingerprint_reruns_a_loader_only_when_its_file_changes() -> None:
    world, cache = ToyWorld(), OutputCache()
    prompt = {
        "1": {"class_type": "Load", "inputs": {"name": "a.bin"}},
        "2": {"class_type": "Scale", "inputs": {"x": link("1"), "factor": 2.0}},
        "3": {"class_type": "ShowNumber", "inputs": {"x": link("2")}},
    }
    _run(world, prompt, cache)
    _run(world, prompt, cache)
    assert world.calls == []
    world.files["a.bin"], world.file_versions["a.bin"] = 5.0, 1  # the file was replaced on disk
    result, _ = _run(world, prompt, cache)
    assert world.calls == ["1", "2", "3"] and result.ui_outputs["3"] == {"value": [10.0]}
    world.file_versions["a.bin"] = float("nan")  # NaN: always re-run, like ComfyUI's IS_CHANGED
    _run(world, prompt, cache)
    _run(world, prompt, cache)
    assert world.calls == ["1", "2", "3"]


def test_cache_policies() -> None:
    other = {
        "1": {"class_type": "Number", "inputs": {"value": 9.0}},
        "2": {"class_type": "ShowNumber", "inputs": {"x": link("1")}},
    }
    world = ToyWorld()
    classic = OutputCache()
    for prompt in (chain_prompt(), other, chain_prompt()):
        _run(world, prompt, classic)
    assert len(world.calls) == 8  # classic keeps only the last prompt's entries, so all re-ran
    lru = OutputCache(max_entries=100)
    for prompt in (chain_prompt(), other, chain_prompt()):
        _run(world, prompt, lru)
    assert world.calls == [] and len(lru) == 10
    tiny = OutputCache(max_entries=2)
    _run(world, chain_prompt(), tiny)
    assert len(tiny) == 2
    none = OutputCache(max_entries=0)
    _run(world, chain_prompt(), none)
    _run(world, chain_prompt(), none)
    assert len(world.calls) == 8 and len(none) == 0


def test_cancel_between_nodes_then_resume_from_cache() -> None:
    world, cache, token = ToyWorld(), OutputCache(), CancelToken()
    events: list = []

    def sink(event: Any) -> None:
        events.append(event)
        if isinstance(event, Executing) and event.node == "2":
            token.cancel()  # arrives while node 2 runs; node 2 finishes, node 3 never starts

    with pytest.raises(WorkflowCancelled) as info:
        execute(chain_prompt(), world.registry, cache=cache, events=sink, cancel=token, prompt_id="p")
    assert isinstance(info.value, Cancelled) and info.value.node_id == "3" and info.value.executed == ["1", "2"]
    assert world.calls == ["1", "2"]
    assert events[-2] == ExecutionInterrupted("3", "Add", ("1", "2"), "p", events[-2].timestamp)
    assert events[-1] == Executing(None, "p") and not any(isinstance(e, ExecutionSuccess) for e in events)
    result, _ = _run(world, chain_prompt(), cache, cancel=CancelToken())
    assert result.cached == ["1", "2"] and world.calls == ["3", "4", "5", "6", "7", "8"]


def test_cancel_inside_a_node() -> None:
    world, token = ToyWorld(), CancelToken()
    events: list = []
    prompt = {
        "1": {"class_type": "Number", "inputs": {"value": 1.0}},
        "2": {"class_type": "Slow", "inputs": {"x": link("1"), "steps": 50}},
        "3": {"class_type": "ShowNumber", "inputs": {"x": link("2")}},
    }

    def sink(event: Any) -> None:
        events.append(event)
        if isinstance(event, Progress) and event.value == 2:
            token.cancel()

    with pytest.raises(WorkflowCancelled) as info:
        execute(prompt, world.registry, cache=OutputCache(), events=sink, cancel=token)
    assert info.value.node_id == "2" and info.value.executed == ["1"]
    assert [e.value for e in events if isinstance(e, Progress)] == [1, 2]  # stopped at step 2 of 50
    assert isinstance(events[-2], ExecutionInterrupted) and events[-2].node == "2"


def test_cancel_from_another_thread() -> None:
    world, token = ToyWorld(), CancelToken()
    prompt = {
        "1": {"class_type": "Number", "inputs": {"value": 1.0}},
        "2": {"class_type": "Slow", "inputs": {"x": link("1"), "steps": 1000}},
        "3": {"class_type": "ShowNumber", "inputs": {"x": link("2")}},
    }
    started, cancelled, outcome = threading.Event(), threading.Event(), []

    def sink(event: Any) -> None:
        if isinstance(event, Progress) and not started.is_set():
            started.set()
            cancelled.wait(5)

    def worker() -> None:
        try:
            execute(prompt, world.registry, cache=OutputCache(), events=sink, cancel=token)
        except Cancelled as ex:
            outcome.append(ex)

    thread = threading.Thread(target=worker)
    thread.start()
    assert started.wait(5)
    token.cancel()
    cancelled.set()
    thread.join(5)
    assert not thread.is_alive() and len(outcome) == 1 and outcome[0].node_id == "2"


@pytest.mark.parametrize(
    ("node_type", "message", "exception_type"),
    [
        ("Boom", "cannot handle 50", "UserInputError"),
        ("Crash", "ZeroDivisionError: division by zero", "ZeroDivisionError"),
        ("WrongArity", "TypeError: returned 2 value(s) but declares 1 output(s)", "TypeError"),
    ],
)
def test_node_failure_reports_and_keeps_finished_work(node_type: str, message: str, exception_type: str) -> None:
    world, cache = ToyWorld(), OutputCache()
    prompt = chain_prompt()
    prompt["10"] = {"class_type": node_type, "inputs": {"x": link("4")}}
    prompt["5"]["inputs"]["x"] = link("10")
    with pytest.raises(NodeExecutionError) as info:
        _run(world, prompt, cache, prompt_id="p")
    assert (info.value.node_id, info.value.class_type) == ("10", node_type)
    assert str(info.value) == f"node 10 ({node_type}) failed: {message}"
    result, _ = _run(world, chain_prompt(), cache)  # the broken node removed: upstream work is reused
    assert result.cached == ["1", "2", "3", "4"]


def test_node_failure_event() -> None:
    world = ToyWorld()
    prompt = {
        "1": {"class_type": "Number", "inputs": {"value": 3.0}},
        "2": {"class_type": "Boom", "inputs": {"x": link("1")}},
        "3": {"class_type": "ShowNumber", "inputs": {"x": link("2")}},
    }
    events: list = []
    with pytest.raises(NodeExecutionError):
        execute(prompt, world.registry, cache=OutputCache(), events=events.append, prompt_id="p")
    error = next(e for e in events if isinstance(e, ExecutionError))
    data = error.to_comfy_message()["data"]
    assert (data["node_id"], data["node_type"], data["exception_message"]) == ("2", "Boom", "cannot handle 3")
    assert data["traceback"] == [] and data["executed"] == ["1"]
    assert isinstance(events[-1], Executing) and events[-1].node is None


def test_invalid_prompt_raises_before_anything_runs() -> None:
    world, events = ToyWorld(), []
    prompt = chain_prompt()
    prompt["5"]["inputs"]["style"] = "bold"
    prompt["8"]["inputs"]["x"] = link("99")
    with pytest.raises(WorkflowValidationError) as info:
        execute(prompt, world.registry, cache=OutputCache(), events=events.append)
    assert events == [] and world.calls == []
    assert set(info.value.node_errors) == {"5", "8"}


def test_partially_valid_prompt_runs_the_valid_outputs() -> None:
    world = ToyWorld()
    prompt = chain_prompt()
    prompt["5"]["inputs"]["style"] = "bold"
    result, _ = _run(world, prompt)
    assert world.calls == ["7", "8"] and result.output_nodes == ["8"]
    assert result.node_errors["5"]["dependent_outputs"] == ["6"]


def test_a_failing_event_sink_does_not_stop_the_run() -> None:
    def sink(event: Any) -> None:
        raise RuntimeError("websocket closed")

    result = execute(chain_prompt(), ToyWorld().registry, cache=OutputCache(), events=sink)
    assert result.ui_outputs["8"] == {"value": [7.0]}


def test_extra_data_reaches_nodes_through_the_context() -> None:
    seen: dict[str, Any] = {}

    def capture(x: float, context: Any) -> dict:
        seen.update(extra=dict(context.extra), prompt=dict(context.prompt), node=context.node_id, pid=context.prompt_id)
        return {"ui": {"value": [x]}}

    world = ToyWorld()
    registry = NodeRegistry([world.registry.get(t) for t in ("Number", "Add", "Scale")])
    registry.register(NodeSpec("Capture", (InputSpec("x", "NUMBER"),), (), capture, output_node=True))
    prompt = {k: v for k, v in chain_prompt().items() if k in ("1", "2", "3", "4")}
    prompt["5"] = {"class_type": "Capture", "inputs": {"x": link("4")}}
    execute(prompt, registry, cache=OutputCache(), prompt_id="q", extra={"extra_pnginfo": {"workflow": {"nodes": []}}})
    assert seen["extra"] == {"extra_pnginfo": {"workflow": {"nodes": []}}} and seen["node"] == "5"
    assert seen["prompt"]["4"] == {"inputs": {"x": ["3", 0], "factor": 10.0}, "class_type": "Scale"}
    assert seen["pid"] == "q"


def test_sd35_workflow_prompt_change_reruns_text_encoding_not_loaders() -> None:
    calls: list[str] = []
    registry = sd3_lookalike_registry(calls)
    cache = OutputCache()
    prompt = load_json(WORKFLOWS / "SD3.5M_example_workflow_api.json")
    first = execute(prompt, registry, cache=cache)
    assert sorted(calls, key=int) == sorted(prompt, key=int)
    assert first.ui_outputs == {"50": {"images": [{"filename": "50.png", "subfolder": "", "type": "temp"}]}}
    order = first.executed
    for node_id, node in prompt.items():  # every input ran before its consumer
        for value in node["inputs"].values():
            if isinstance(value, list):
                assert order.index(value[0]) < order.index(node_id)
    new_text = copy.deepcopy(prompt)
    new_text["6"]["inputs"]["text"] = "a red fox in the snow"
    calls.clear()
    execute(new_text, registry, cache=cache)
    assert calls == ["6", "294", "8", "50"]  # loaders 4, 11 and the negative branch come from the cache
    new_seed = copy.deepcopy(new_text)
    new_seed["294"]["inputs"]["seed"] = 1
    calls.clear()
    execute(new_seed, registry, cache=cache)
    assert calls == ["294", "8", "50"]


def test_events_are_plain_frozen_values() -> None:
    assert ExecutionStart("p").to_comfy_message()["type"] == "execution_start"
    assert ExecutionCached(("1",), "p").to_comfy_message()["data"]["nodes"] == ["1"]
    assert ExecutionSuccess("p").to_comfy_message()["data"]["prompt_id"] == "p"
    with pytest.raises(AttributeError):
        ExecutionStart("p").prompt_id = "q"  # type: ignore[misc]
