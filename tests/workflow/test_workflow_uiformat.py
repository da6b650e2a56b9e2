"""UI workflow -> API prompt: the real SD3.5 workflows, and every frontend-only construct."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from wf_toys import WORKFLOWS, ToyWorld, load_json, sd3_lookalike_registry

from sd35.workflow import WorkflowValidationError, is_ui_format, load_prompt_text, ui_to_api, validate


def _nodes(prompt: dict[str, Any]) -> dict[str, tuple[str, dict]]:
    return {k: (v["class_type"], v["inputs"]) for k, v in prompt.items()}


def test_official_sd35m_workflow_converts_to_the_api_file() -> None:
    ui = load_json(WORKFLOWS / "SD3.5M_example_workflow.json")
    api = load_json(WORKFLOWS / "SD3.5M_example_workflow_api.json")
    assert is_ui_format(ui) and not is_ui_format(api)
    prompt = ui_to_api(ui, sd3_lookalike_registry())
    assert _nodes(prompt) == _nodes(api)  # 13 nodes; the Note (105) is gone
    assert list(prompt["294"]["inputs"]) == list(api["294"]["inputs"])  # input_order kept
    assert prompt["294"]["inputs"]["seed"] == 193277626003815  # "randomize" skipped, not sent
    assert prompt["4"]["_meta"]["title"] == "Load Checkpoint"  # display name, as the frontend titles nodes


def test_user_edited_variant_and_sd35_large_template() -> None:
    registry = sd3_lookalike_registry()
    variant = ui_to_api(load_json(WORKFLOWS / "SD3.5M_example.json"), registry)
    assert variant["13"]["inputs"] == {"model": ["4", 0], "shift": 6}
    template = ui_to_api(load_json(WORKFLOWS / "sd3.5_simple_example.json"), registry)
    assert sorted(template, key=int) == ["3", "4", "8", "9", "16", "40", "53"]  # MarkdownNote 54 dropped
    assert template["3"]["inputs"] == {
        "model": ["4", 0],
        "seed": 585483408983215,
        "steps": 20,
        "cfg": 4.01,
        "sampler_name": "euler",
        "scheduler": "sgm_uniform",
        "positive": ["16", 0],
        "negative": ["40", 0],
        "latent_image": ["53", 0],
        "denoise": 1,
    }
    assert template["16"]["inputs"]["clip"] == ["4", 1] and template["9"]["inputs"]["filename_prefix"] == "ComfyUI"
    for prompt in (variant, template):
        result = validate(prompt, registry)
        assert result.ok and not result.node_errors


def test_seed_converted_to_input_and_driven_by_a_primitive_node() -> None:
    ui = copy.deepcopy(load_json(WORKFLOWS / "SD3.5M_example_workflow.json"))
    sampler = next(n for n in ui["nodes"] if n["id"] == 294)
    sampler["inputs"].append({"name": "seed", "type": "INT", "widget": {"name": "seed"}, "link": 700})
    ui["nodes"].append(
        {
            "id": 301,
            "type": "PrimitiveNode",
            "mode": 0,
            "inputs": [],
            "widgets_values": [42, "fixed"],
            "outputs": [{"name": "INT", "type": "INT", "widget": {"name": "seed"}, "links": [700]}],
        }
    )
    ui["links"].append([700, 301, 0, 294, 4, "INT"])
    prompt = ui_to_api(ui, sd3_lookalike_registry())
    assert "301" not in prompt
    assert prompt["294"]["inputs"]["seed"] == 42 and prompt["294"]["inputs"]["steps"] == 40


def _ui(nodes: list[dict], links: list[list]) -> dict[str, Any]:
    return {"last_node_id": 99, "last_link_id": 99, "nodes": nodes, "links": links, "groups": [], "version": 0.4}


def _node(
    node_id: int, node_type: str, widgets: Any = None, inputs: tuple = (), outputs: tuple = (), mode: int = 0
) -> dict[str, Any]:
    node = {
        "id": node_id,
        "type": node_type,
        "mode": mode,
        "inputs": [dict(name=n, type=t, link=lk, **({"widget": {"name": n}} if w else {})) for n, t, lk, w in inputs],
        "outputs": [{"name": t, "type": t, "links": []} for t in outputs],
    }
    if widgets is not None:
        node["widgets_values"] = widgets
    return node


def _frontend_graph() -> dict[str, Any]:
    """Reroutes, a PrimitiveNode on a converted widget, a converted widget linked to a real node,
    a bypassed node, a muted node and a Note, all in one toy graph."""
    nodes = [
        _node(1, "Number", [2.0], outputs=("NUMBER",)),
        _node(2, "Reroute", inputs=(("", "*", 10, False),), outputs=("*",)),
        _node(3, "Reroute", inputs=(("", "*", 11, False),), outputs=("*",)),
        _node(
            4,
            "Scale",
            [3.0, 0.5],
            inputs=(("x", "NUMBER", 12, False), ("factor", "FLOAT", 13, True)),
            outputs=("NUMBER",),
        ),
        {
            "id": 5,
            "type": "PrimitiveNode",
            "mode": 0,
            "widgets_values": [4.0, "fixed"],
            "outputs": [{"name": "FLOAT", "type": "FLOAT", "widget": {"name": "factor"}, "links": [13]}],
        },
        _node(6, "Boom", inputs=(("x", "NUMBER", 14, False),), outputs=("NUMBER",), mode=4),
        _node(7, "Format", ["fixed2"], inputs=(("x", "NUMBER", 15, False),), outputs=("TEXT",)),
        _node(8, "Show", inputs=(("text", "TEXT", 16, False),)),
        _node(9, "Note", ["remember to smile"]),
        _node(10, "Number", [5.0], outputs=("NUMBER",), mode=2),
        _node(11, "Add", inputs=(("a", "NUMBER", 18, False), ("b", "NUMBER", 17, False)), outputs=("NUMBER",)),
        _node(12, "ShowNumber", inputs=(("x", "NUMBER", 19, False),)),
        _node(
            13,
            "Scale",
            {"factor": 2.0},
            inputs=(("x", "NUMBER", 20, False), ("offset", "FLOAT", 21, True)),
            outputs=("NUMBER",),
        ),
        _node(14, "ShowNumber", inputs=(("x", "NUMBER", 22, False),)),
    ]
    links = [
        [10, 1, 0, 2, 0, "NUMBER"],
        [11, 2, 0, 3, 0, "NUMBER"],
        [12, 3, 0, 4, 0, "NUMBER"],
        [13, 5, 0, 4, 1, "FLOAT"],
        [14, 4, 0, 6, 0, "NUMBER"],
        [15, 6, 0, 7, 0, "NUMBER"],
        [16, 7, 0, 8, 0, "TEXT"],
        [17, 10, 0, 11, 1, "NUMBER"],
        [18, 1, 0, 11, 0, "NUMBER"],
        [19, 11, 0, 12, 0, "NUMBER"],
        [20, 1, 0, 13, 0, "NUMBER"],
        [21, 1, 0, 13, 1, "NUMBER"],
        [22, 13, 0, 14, 0, "NUMBER"],
    ]
    return _ui(nodes, links)


def test_frontend_only_constructs() -> None:
    registry = ToyWorld().registry
    prompt = ui_to_api(_frontend_graph(), registry)
    assert sorted(prompt, key=int) == ["1", "4", "7", "8", "11", "12", "13", "14"]
    assert prompt["4"]["inputs"] == {"x": ["1", 0], "factor": 4.0, "offset": 0.5}  # reroutes + primitive
    assert prompt["7"]["inputs"] == {"x": ["4", 0], "style": "fixed2"}  # bypassed Boom spliced out
    assert prompt["11"]["inputs"] == {"a": ["1", 0]}  # the link from muted node 10 is dropped
    assert prompt["13"]["inputs"] == {"x": ["1", 0], "factor": 2.0, "offset": ["1", 0]}  # dict widgets_values
    result = validate(prompt, registry)
    assert result.ok and result.outputs == ["8"]  # 12 and 14 fail validation, 8 still runs
    assert result.node_errors["11"]["errors"][0]["type"] == "required_input_missing"
    assert result.node_errors["11"]["dependent_outputs"] == ["12"]
    assert result.node_errors["13"]["errors"][0]["type"] == "return_type_mismatch"  # NUMBER into FLOAT


def test_bypass_without_a_matching_input_drops_the_link_and_defaults_fill_missing_widgets() -> None:
    nodes = [
        _node(1, "Number", [1.0], outputs=("NUMBER",)),
        _node(2, "Format", ["plain"], inputs=(("x", "NUMBER", 1, False),), outputs=("TEXT",), mode=4),
        _node(3, "Concat", [], inputs=(("a", "TEXT", 2, False), ("b", "TEXT", 3, False)), outputs=("TEXT",)),
        _node(4, "Format", ["plain", "extra", "values"], inputs=(("x", "NUMBER", 4, False),), outputs=("TEXT",)),
    ]
    links = [[1, 1, 0, 2, 0, "NUMBER"], [2, 2, 0, 3, 0, "TEXT"], [3, 4, 0, 3, 1, "TEXT"], [4, 1, 0, 4, 0, "NUMBER"]]
    prompt = ui_to_api(_ui(nodes, links), ToyWorld().registry)
    assert prompt["3"]["inputs"] == {"b": ["4", 0], "sep": " "}  # a: TEXT cannot pass through Format's NUMBER
    assert prompt["4"]["inputs"] == {"x": ["1", 0], "style": "plain"}  # surplus widget values ignored


def test_list_widget_values_are_wrapped_and_schema_1_links_are_read() -> None:
    nodes = [
        _node(1, "Number", [[1, 2]], outputs=("NUMBER",)),
        _node(2, "ShowNumber", inputs=(("x", "NUMBER", 5, False),)),
    ]
    links = [{"id": 5, "origin_id": 1, "origin_slot": 0, "target_id": 2, "target_slot": 0, "type": "NUMBER"}]
    prompt = ui_to_api(_ui(nodes, links), ToyWorld().registry)
    assert prompt["1"]["inputs"] == {"value": {"__value__": [1, 2]}}
    assert prompt["2"]["inputs"] == {"x": ["1", 0]}


def test_unknown_ui_node_types_are_kept_for_validation_to_report() -> None:
    nodes = [
        _node(1, "FancyCustomNode", [1, 2], outputs=("NUMBER",)),
        _node(2, "ShowNumber", inputs=(("x", "NUMBER", 1, False),)),
    ]
    registry = ToyWorld().registry
    prompt = ui_to_api(_ui(nodes, [[1, 1, 0, 2, 0, "NUMBER"]]), registry)
    assert prompt["1"] == {"inputs": {}, "class_type": "FancyCustomNode", "_meta": {"title": "FancyCustomNode"}}
    result = validate(prompt, registry)
    assert not result.ok and result.error["type"] == "invalid_prompt"
    assert result.node_errors["1"]["errors"][0]["type"] == "missing_node_type"


BROKEN_UI = {
    "dangling link id": (
        _ui([_node(1, "ShowNumber", inputs=(("x", "NUMBER", 77, False),))], []),
        "1",
        "input 'x' uses link 77, which is not in the workflow's links",
    ),
    "link from a missing node": (
        _ui([_node(2, "ShowNumber", inputs=(("x", "NUMBER", 5, False),))], [[5, 42, 0, 2, 0, "NUMBER"]]),
        "2",
        "input 'x' is connected to node 42, which is not in the workflow",
    ),
    "malformed link": (_ui([_node(1, "Number", [1.0])], [[5, 1]]), "links[0]", "link [5, 1] is malformed"),
    "node without type": (_ui([{"id": 3}], []), "nodes[0]", "a node needs an 'id' and a 'type'"),
    "duplicate ids": (_ui([_node(1, "Number", [1.0]), _node(1, "Number", [2.0])], []), "1", "used twice"),
    "group node": (
        {**_ui([_node(1, "workflow>Mine", [])], []), "extra": {"groupNodes": {"workflow>Mine": {}}}},
        "1",
        "group node or subgraph",
    ),
    "reroute loop": (
        _ui(
            [
                _node(1, "Reroute", inputs=(("", "*", 1, False),), outputs=("*",)),
                _node(2, "ShowNumber", inputs=(("x", "NUMBER", 2, False),)),
            ],
            [[1, 1, 0, 1, 0, "*"], [2, 1, 0, 2, 0, "NUMBER"]],
        ),
        "1",
        "links loop",
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN_UI))
def test_broken_ui_workflows_name_the_node(case: str) -> None:
    workflow, node_id, text = BROKEN_UI[case]
    with pytest.raises(WorkflowValidationError) as info:
        ui_to_api(workflow, ToyWorld().registry)
    body = info.value.response
    assert body["error"]["type"] == "invalid_prompt"
    assert text in body["node_errors"][node_id]["errors"][0]["message"]
    assert text in str(info.value)


def test_bad_json_and_wrong_top_level() -> None:
    with pytest.raises(WorkflowValidationError, match="not valid JSON") as info:
        load_prompt_text('{"nodes": [', ToyWorld().registry)
    assert info.value.response["error"]["details"].startswith("line 1 column 12")
    with pytest.raises(WorkflowValidationError, match="expected an object with a 'nodes' list"):
        ui_to_api({"nodes": "x"}, ToyWorld().registry)
    api = load_prompt_text('{"1": {"class_type": "Number", "inputs": {"value": 1}}}', ToyWorld().registry)
    assert api == {"1": {"class_type": "Number", "inputs": {"value": 1}}}
