"""ComfyUI's UI workflow (nodes + links + widgets_values, as saved by the frontend) -> API prompt.

Follows the frontend's graphToPrompt (ComfyUI_frontend `executionUtil.ts`, `ExecutableNodeDTO.ts`):
- widgets_values map in order onto the node's widget inputs (INT/FLOAT/STRING/BOOLEAN/COMBO, required
  then optional); a control_after_generate widget (seed) is followed by a mode value that is not sent,
  an image_upload widget by the upload button's value; missing values take the input's default;
- a linked input (a socket, or a widget converted to an input) is sent as [origin_id, slot];
- Note/MarkdownNote are dropped; Reroute passes its input through; PrimitiveNode gives its value;
- muted nodes (mode 2) are dropped together with links from them; bypassed nodes (mode 4) are spliced
  out: a consumer gets the bypassed node's input of the same slot or of a matching type."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .errors import WorkflowValidationError
from .registry import NodeRegistry
from .spec import NodeSpec

VIRTUAL_NODE_TYPES = frozenset({"Note", "MarkdownNote", "Reroute", "PrimitiveNode"})
MODE_NEVER, MODE_BYPASS = 2, 4  # LGraphEventMode: 0 always, 2 never (muted), 4 bypass


def is_ui_format(data: Any) -> bool:
    """True for a frontend workflow (has a "nodes" list), False for an API prompt."""
    return isinstance(data, dict) and isinstance(data.get("nodes"), list)


@dataclass(frozen=True)
class _Ref:
    node_id: str
    slot: int


@dataclass(frozen=True)
class _Value:
    value: Any


class _UiError(Exception):
    def __init__(self, node_id: str, message: str) -> None:
        super().__init__(message)
        self.node_id = node_id


def _valid_connection(a: Any, b: Any) -> bool:
    """LiteGraph.isValidConnection: "*"/"" match anything; comma lists match on any common type."""
    if a in ("", "*", 0, None) or b in ("", "*", 0, None) or a == b:
        return True
    a, b = str(a).lower(), str(b).lower()
    return bool(set(a.split(",")) & set(b.split(",")))


def _link_tuple(link: Any) -> tuple[Any, str, int, str, int, Any] | None:
    """(id, origin_id, origin_slot, target_id, target_slot, type) from a 0.4 list or a 1.0 dict link."""
    if isinstance(link, dict):
        keys = ("id", "origin_id", "origin_slot", "target_id", "target_slot")
        if not all(k in link for k in keys):
            return None
        link = [link[k] for k in keys] + [link.get("type")]
    if not isinstance(link, (list, tuple)) or len(link) < 5:
        return None
    link_id, origin, origin_slot, target, target_slot = link[:5]
    if not isinstance(origin_slot, int) or not isinstance(target_slot, int) or origin is None:
        return None
    return link_id, str(origin), origin_slot, str(target), target_slot, link[5] if len(link) > 5 else None


class _Workflow:
    """Indexed view of a UI workflow; collects structural problems as node errors."""

    def __init__(self, data: Any) -> None:
        if not is_ui_format(data):
            raise WorkflowValidationError(_invalid("Invalid workflow: expected an object with a 'nodes' list"))
        self.nodes: dict[str, dict[str, Any]] = {}
        self.errors: dict[str, list[str]] = {}
        for index, node in enumerate(data["nodes"]):
            if not isinstance(node, dict) or node.get("id") is None or not isinstance(node.get("type"), str):
                self.errors.setdefault(f"nodes[{index}]", []).append("a node needs an 'id' and a 'type'")
                continue
            node_id = str(node["id"])
            if node_id in self.nodes:
                self.errors.setdefault(node_id, []).append(f"node id {node_id} is used twice")
            self.nodes[node_id] = node
        self.links: dict[Any, tuple] = {}
        raw_links = data.get("links") or []
        if not isinstance(raw_links, list):
            raise WorkflowValidationError(_invalid("Invalid workflow: 'links' must be a list"))
        for index, raw in enumerate(raw_links):
            link = _link_tuple(raw)
            if link is None:
                self.errors.setdefault(f"links[{index}]", []).append(f"link {raw!r} is malformed")
            else:
                self.links[link[0]] = link
        extra = data.get("extra") if isinstance(data.get("extra"), dict) else {}
        definitions = data.get("definitions") if isinstance(data.get("definitions"), dict) else {}
        self.composite = set(extra.get("groupNodes") or {})
        self.composite |= {s.get("id") for s in definitions.get("subgraphs") or [] if isinstance(s, dict)}

    def resolve_input(self, node: dict, index: int, want: Any, visited: set) -> _Ref | _Value | None:
        """Follow input `index` of `node` back to a real node's output (or a primitive's value)."""
        node_id = str(node["id"])
        if (node_id, "in", index) in visited:
            raise _UiError(node_id, "links loop through reroutes or bypassed nodes")
        visited.add((node_id, "in", index))
        slots = node.get("inputs") or []
        if index >= len(slots) or not isinstance(slots[index], dict) or slots[index].get("link") is None:
            return None
        name, link_id = slots[index].get("name"), slots[index]["link"]
        link = self.links.get(link_id)
        if link is None:
            raise _UiError(node_id, f"input '{name}' uses link {link_id}, which is not in the workflow's links")
        origin = self.nodes.get(link[1])
        if origin is None:
            raise _UiError(node_id, f"input '{name}' is connected to node {link[1]}, which is not in the workflow")
        return self.resolve_output(origin, link[2], want if want is not None else slots[index].get("type"), visited)

    def resolve_output(self, node: dict, slot: int, want: Any, visited: set) -> _Ref | _Value | None:
        node_id = str(node["id"])
        if (node_id, "out", slot) in visited:
            raise _UiError(node_id, "links loop through reroutes or bypassed nodes")
        visited.add((node_id, "out", slot))
        if node.get("mode") == MODE_BYPASS:
            index = _bypass_input(node, slot, want)
            return None if index < 0 else self.resolve_input(node, index, want, visited)
        if node["type"] == "PrimitiveNode":
            values = node.get("widgets_values")
            return _Value(values[0]) if isinstance(values, list) and values else None
        if node["type"] in VIRTUAL_NODE_TYPES:
            return self.resolve_input(node, slot, want, visited)
        return _Ref(node_id, slot)


def _bypass_input(node: dict, slot: int, want: Any) -> int:
    """Which input a bypassed node's output `slot` passes through (ExecutableNodeDTO rules), or -1."""
    inputs = [i if isinstance(i, dict) else {} for i in node.get("inputs") or []]
    outputs = node.get("outputs") or []
    out_type = outputs[slot].get("type") if slot < len(outputs) and isinstance(outputs[slot], dict) else want
    if want in ("*", "", None):
        return slot if slot < len(inputs) else (0 if inputs else -1)
    if (
        slot < len(inputs)
        and _valid_connection(inputs[slot].get("type"), out_type)
        and _valid_connection(inputs[slot].get("type"), want)
    ):
        return slot
    for index, slot_info in enumerate(inputs):
        if slot_info.get("type") == want:
            return index
    for index, slot_info in enumerate(inputs):
        if _valid_connection(slot_info.get("type"), out_type) and _valid_connection(slot_info.get("type"), want):
            return index
    return -1


def widget_values(node: dict[str, Any], spec: NodeSpec) -> dict[str, Any]:
    """Widget input name -> value from a UI node's widgets_values (list or name-keyed dict)."""
    values = node.get("widgets_values")
    out: dict[str, Any] = {}
    position = 0
    for input_spec in spec.widget_inputs:
        if isinstance(values, dict) and input_spec.name in values:
            out[input_spec.name] = values[input_spec.name]
        elif isinstance(values, list) and position < len(values):
            out[input_spec.name] = values[position]
        elif input_spec.default is not None:
            out[input_spec.name] = input_spec.default
        position += 1 + input_spec.extra_widget_slots
    return out


def _wrap(value: Any) -> Any:
    """A list-valued widget is sent as {"__value__": [...]} so it is not read as a link."""
    return {"__value__": value} if isinstance(value, list) else value


def _node_inputs(flow: _Workflow, node: dict, spec: NodeSpec | None) -> dict[str, Any]:
    inputs: dict[str, Any] = {k: _wrap(v) for k, v in (widget_values(node, spec) if spec else {}).items()}
    for index, slot in enumerate(node.get("inputs") or []):
        if not isinstance(slot, dict) or slot.get("link") is None:
            continue
        widget = slot.get("widget") if isinstance(slot.get("widget"), dict) else {}
        name = widget.get("name") or slot.get("name")
        resolved = flow.resolve_input(node, index, None, set())
        if isinstance(resolved, _Value):
            inputs[name] = _wrap(resolved.value)
        elif isinstance(resolved, _Ref):
            inputs[name] = [resolved.node_id, resolved.slot]
    if spec is None:
        return inputs
    ordered = {i.name: inputs[i.name] for i in spec.ordered_inputs if i.name in inputs}
    ordered.update((k, v) for k, v in inputs.items() if k not in ordered)
    return ordered


def _invalid(message: str, node_errors: dict[str, Any] | None = None, details: str = "") -> dict[str, Any]:
    error = {"type": "invalid_prompt", "message": message, "details": details, "extra_info": {}}
    return {"error": error, "node_errors": node_errors or {}}


def _raise_node_errors(flow: _Workflow, problems: dict[str, list[str]]) -> None:
    node_errors = {}
    for node_id, messages in problems.items():
        node = flow.nodes.get(node_id, {})
        errors = [
            {
                "type": "bad_linked_input" if "link" in m else "invalid_prompt",
                "message": m,
                "details": f"Node ID '#{node_id}'",
                "extra_info": {},
            }
            for m in messages
        ]
        node_errors[node_id] = {"errors": errors, "dependent_outputs": [], "class_type": node.get("type")}
    first_id, first = next(iter(problems.items()))
    raise WorkflowValidationError(_invalid(f"Invalid workflow: {first[0]}", node_errors, f"Node ID '#{first_id}'"))


def ui_to_api(workflow: dict[str, Any], registry: NodeRegistry) -> dict[str, Any]:
    """API-format prompt for a UI workflow. Unknown node types are kept (links only) so validation
    reports them; broken links, duplicate ids and group nodes raise WorkflowValidationError."""
    flow = _Workflow(workflow)
    problems = {k: list(v) for k, v in flow.errors.items()}
    prompt: dict[str, Any] = {}
    for node_id, node in flow.nodes.items():
        if node["type"] in VIRTUAL_NODE_TYPES or node.get("mode") in (MODE_NEVER, MODE_BYPASS):
            continue
        if node["type"] in flow.composite:
            problems.setdefault(node_id, []).append(
                f"node {node_id} is a group node or subgraph ({node['type']}); convert it back to plain nodes"
            )
            continue
        spec = registry.find(node["type"])
        try:
            inputs = _node_inputs(flow, node, spec)
        except _UiError as ex:
            problems.setdefault(ex.node_id, []).append(str(ex))
            continue
        title = node.get("title") or (spec.title if spec else node["type"])
        prompt[node_id] = {"inputs": inputs, "class_type": node["type"], "_meta": {"title": title}}
    if problems:
        _raise_node_errors(flow, problems)
    for entry in prompt.values():  # links from muted nodes disappear, as in graphToPrompt
        for name in [k for k, v in entry["inputs"].items() if isinstance(v, list) and v[0] not in prompt]:
            del entry["inputs"][name]
    return prompt


def load_prompt(data: Any, registry: NodeRegistry) -> dict[str, Any]:
    """API prompt from either format (a UI workflow is converted; an API prompt is returned as is)."""
    return ui_to_api(data, registry) if is_ui_format(data) else data


def load_prompt_text(text: str | bytes, registry: NodeRegistry) -> dict[str, Any]:
    """API prompt from JSON text in either format; WorkflowValidationError if it is not valid JSON."""
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as ex:
        where = f"line {ex.lineno} column {ex.colno}: {ex.msg}" if isinstance(ex, json.JSONDecodeError) else str(ex)
        raise WorkflowValidationError(_invalid("Workflow is not valid JSON", details=where)) from None
    return load_prompt(data, registry)
