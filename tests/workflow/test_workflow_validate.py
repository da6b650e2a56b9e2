"""Validation: ComfyUI's 400 body, and one clear per-node error for each kind of broken prompt."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
from wf_toys import SAMPLES, WORKFLOWS, ToyWorld, chain_prompt, link, load_json, sd3_lookalike_registry

from sd35.workflow import NodeRegistry, NodeSpec, WorkflowValidationError, parse_api_prompt, validate
from sd35.workflow.spec import InputSpec


def test_reproduces_comfyuis_400_body() -> None:
    """The sample was captured from ComfyUI v0.3.64: text removed from node 6, a bad sampler name."""
    prompt = copy.deepcopy(load_json(WORKFLOWS / "SD3.5M_example_workflow_api.json"))
    prompt["900"] = {"class_type": "SaveLatent", "inputs": {"samples": ["294", 0], "filename_prefix": "base"}}
    prompt["901"] = {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "base"}}
    del prompt["6"]["inputs"]["text"]
    prompt["294"]["inputs"]["sampler_name"] = "not_a_sampler"
    body = validate(prompt, sd3_lookalike_registry()).to_response()
    expected = load_json(SAMPLES / "post_prompt_400_validation_error.json")["body"]
    for entry in (*body["node_errors"].values(), *expected["node_errors"].values()):
        entry["dependent_outputs"].sort()  # ComfyUI's order comes from a set
    assert body == expected


def test_valid_prompt_converts_literals() -> None:
    prompt = chain_prompt()
    prompt["4"]["inputs"]["factor"] = 2  # INT given for a FLOAT, as JSON often does
    prompt["1"]["inputs"]["value"] = {"__value__": 5}
    result = validate(prompt, ToyWorld().registry)
    assert result.ok and result.error is None and result.node_errors == {} and result.outputs == ["6", "8"]
    assert result.graph["4"].inputs["factor"] == 2.0 and isinstance(result.graph["4"].inputs["factor"], float)
    assert result.graph["1"].inputs["value"] == 5.0
    assert prompt["1"]["inputs"]["value"] == {"__value__": 5}  # the caller's dict is left alone
    assert validate(prompt, ToyWorld().registry, targets=["8"]).outputs == ["8"]


def _set(node: str, name: str, value: Any) -> Callable[[dict], None]:
    def change(prompt: dict) -> None:
        prompt[node]["inputs"][name] = value

    return change


def _drop(node: str, name: str) -> Callable[[dict], None]:
    return lambda prompt: prompt[node]["inputs"].pop(name)


def _replace(node: str, value: Any) -> Callable[[dict], None]:
    return lambda prompt: prompt.__setitem__(node, value)


def _cycle(prompt: dict) -> None:
    prompt["3"]["inputs"]["a"] = link("4")


def _text_into_number(prompt: dict) -> None:
    prompt["10"] = {"class_type": "Pair", "inputs": {"x": link("1")}}
    prompt["4"]["inputs"]["x"] = link("10", 1)  # Pair's slot 1 is TEXT


# case -> (change to chain_prompt, top-level type, node id, node error type, text in message or details)
BROKEN: dict[str, tuple[Callable[[dict], None], str, str, str, str]] = {
    "non-dict node": (_replace("5", "Format"), "invalid_prompt", "5", "invalid_node", "must be an object"),
    "missing class_type": (_replace("5", {"inputs": {}}), "invalid_prompt", "5", "missing_node_type", "no class_type"),
    "inputs not a dict": (
        _replace("5", {"class_type": "Format", "inputs": [1]}),
        "invalid_prompt",
        "5",
        "invalid_node",
        "inputs of node 5",
    ),
    "unknown node": (
        _replace("5", {"class_type": "Frobnicate", "inputs": {}}),
        "invalid_prompt",
        "5",
        "missing_node_type",
        "'Frobnicate' is not known",
    ),
    "missing link target": (
        _set("4", "x", link("99")),
        "prompt_outputs_failed_validation",
        "4",
        "bad_linked_input",
        "the linked node '99' is not in the prompt",
    ),
    "nonexistent output slot": (
        _set("4", "x", link("3", 2)),
        "prompt_outputs_failed_validation",
        "4",
        "bad_linked_input",
        "node 3 (Add) has 1 output(s), the link asks for output slot 2",
    ),
    "bad link format": (
        _set("4", "x", ["3"]),
        "prompt_outputs_failed_validation",
        "4",
        "bad_linked_input",
        "length-2 list",
    ),
    "link with a string slot": (
        _set("4", "x", ["3", "0"]),
        "prompt_outputs_failed_validation",
        "4",
        "bad_linked_input",
        "x: got ['3', '0']",
    ),
    "type mismatch": (
        _text_into_number,
        "prompt_outputs_failed_validation",
        "4",
        "return_type_mismatch",
        "x, received_type(TEXT) mismatch input_type(NUMBER)",
    ),
    "cycle": (_cycle, "prompt_outputs_failed_validation", "3", "dependency_cycle", "4 (Scale) -> 3 (Add) -> 4 (Scale)"),
    "above max": (
        _set("4", "factor", 11),
        "prompt_outputs_failed_validation",
        "4",
        "value_bigger_than_max",
        "Value 11.0 bigger than max of 10",
    ),
    "below min": (
        _set("4", "factor", -10.5),
        "prompt_outputs_failed_validation",
        "4",
        "value_smaller_than_min",
        "Value -10.5 smaller than min of -10",
    ),
    "not in choices": (
        _set("5", "style", "bold"),
        "prompt_outputs_failed_validation",
        "5",
        "value_not_in_list",
        "style: 'bold' not in ['plain', 'fixed2']",
    ),
    "missing required input": (
        _drop("4", "factor"),
        "prompt_outputs_failed_validation",
        "4",
        "required_input_missing",
        "Required input is missing",
    ),
    "not a number": (
        _set("1", "value", "two"),
        "prompt_outputs_failed_validation",
        "1",
        "invalid_input_type",
        "Failed to convert an input value to a FLOAT value",
    ),
    "boolean for a number": (
        _set("1", "value", True),
        "prompt_outputs_failed_validation",
        "1",
        "invalid_input_type",
        "not a number",
    ),
    "value where a link is needed": (
        _set("3", "a", 5),
        "prompt_outputs_failed_validation",
        "3",
        "invalid_input_type",
        "expects a link from a node that outputs NUMBER",
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_prompt_gives_a_clear_node_error(case: str) -> None:
    change, top_type, node_id, node_type, text = BROKEN[case]
    prompt = chain_prompt()
    del prompt["7"], prompt["8"], prompt["9"]  # leave one output (6) so every case fails as a whole
    change(prompt)
    result = validate(prompt, ToyWorld().registry)
    assert not result.ok and result.outputs == []
    assert set(result.error) == {"type", "message", "details", "extra_info"}
    assert result.error["type"] == top_type
    entry = result.node_errors[node_id]
    assert set(entry) == {"errors", "dependent_outputs", "class_type"}
    error = entry["errors"][0]
    assert set(error) == {"type", "message", "details", "extra_info"} and error["type"] == node_type
    assert text in f"{error['message']} {error['details']}"
    with pytest.raises(WorkflowValidationError) as info:
        result.raise_if_invalid()
    assert f"node {node_id} " in str(info.value) and text in str(info.value)  # readable as one message


def test_cycle_marks_every_node_on_it_and_only_outputs_behind_it_fail() -> None:
    prompt = chain_prompt()
    prompt["3"]["inputs"]["a"] = link("4")
    result = validate(prompt, ToyWorld().registry)
    assert result.ok and result.outputs == ["8"]  # 8 does not depend on the cycle, so it still runs
    assert {n for n, e in result.node_errors.items() if e["errors"][0]["type"] == "dependency_cycle"} == {"3", "4"}
    assert result.node_errors["3"]["dependent_outputs"] == ["6"]


def test_no_output_node_and_not_a_prompt() -> None:
    for prompt in ({}, {"1": {"class_type": "Number", "inputs": {"value": 1.0}}}):
        result = validate(prompt, ToyWorld().registry)
        assert result.error["type"] == "prompt_no_outputs" and result.error["message"] == "Prompt has no outputs"
    for prompt in ([1, 2], "text", None):
        result = validate(prompt, ToyWorld().registry)
        assert result.error["type"] == "invalid_prompt" and "expected a JSON object" in result.error["message"]
    with pytest.raises(WorkflowValidationError, match="must be an object"):
        parse_api_prompt({"1": 5})


def test_errors_upstream_are_reported_once_with_their_dependent_outputs() -> None:
    prompt = chain_prompt()
    prompt["1"]["inputs"]["value"] = 2e6
    result = validate(prompt, ToyWorld().registry)
    assert result.ok and result.outputs == ["8"]  # 8 does not use node 1
    assert list(result.node_errors) == ["1"]  # downstream nodes 3..6 carry no errors of their own
    assert result.node_errors["1"]["dependent_outputs"] == ["6"]
    only_6 = validate(prompt, ToyWorld().registry, targets=["6"])
    assert not only_6.ok and only_6.error["details"] == ""  # ComfyUI lists only the outputs' own errors here


def test_failing_choice_list_is_an_exception_during_validation() -> None:
    def broken() -> list[str]:
        raise OSError("models folder is gone")

    registry = NodeRegistry(
        [NodeSpec("Pick", (InputSpec("f", "COMBO", choices_fn=broken),), (), lambda **k: (), output_node=True)]
    )
    result = validate({"1": {"class_type": "Pick", "inputs": {"f": "x"}}}, registry)
    error = result.node_errors["1"]["errors"][0]
    assert error["type"] == "exception_during_validation" and "models folder is gone" in error["details"]


def test_empty_choice_list_hints_at_missing_files() -> None:
    registry = NodeRegistry(
        [NodeSpec("Pick", (InputSpec("f", "COMBO", choices=()),), (), lambda **k: (), output_node=True)]
    )
    error = validate({"1": {"class_type": "Pick", "inputs": {"f": "x.safetensors"}}}, registry).node_errors["1"]
    assert "no choices are available" in error["errors"][0]["details"]


def test_custom_validation_runs_after_the_built_in_checks() -> None:
    def layers_ok(layers: str) -> bool | str:
        parts = [p.strip() for p in layers.split(",")]
        return all(p.isdigit() for p in parts) or f"layers must be comma-separated numbers, got {layers!r}"

    spec = NodeSpec(
        "SLG", (InputSpec("layers", "STRING"),), (), lambda **k: (), output_node=True, validate_inputs=layers_ok
    )
    registry = NodeRegistry([spec])
    assert validate({"1": {"class_type": "SLG", "inputs": {"layers": "7, 8, 9"}}}, registry).ok
    bad = validate({"1": {"class_type": "SLG", "inputs": {"layers": "7, eight"}}}, registry)
    error = bad.node_errors["1"]["errors"][0]
    assert error["type"] == "custom_validation_failed" and "got '7, eight'" in error["details"]
