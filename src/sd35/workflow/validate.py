"""Check a prompt before running it and report ComfyUI-shaped errors (`execution.py` validate_prompt /
validate_inputs): error types and messages as ComfyUI names them, with details that say what to fix."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .errors import WorkflowValidationError
from .graph import Graph, GraphNode, Link, node_sort_key, parse_api_prompt_collecting
from .objectinfo import input_object_info
from .registry import NodeRegistry
from .spec import BOOLEAN, COMBO, FLOAT, INT, PRIMITIVE_TYPES, STRING, InputSpec, NodeSpec

_MAX_LISTED_CHOICES = 20  # ComfyUI replaces longer lists by "(list of length N)"


@dataclass
class ValidationResult:
    """`outputs`: output nodes that validated (they run even if others failed, as in ComfyUI).
    `graph`: the prompt with literal values converted to their declared types."""

    ok: bool
    error: dict[str, Any] | None = None
    node_errors: dict[str, Any] = field(default_factory=dict)
    outputs: list[str] = field(default_factory=list)
    graph: Graph = field(default_factory=lambda: Graph({}))

    def to_response(self) -> dict[str, Any]:
        """ComfyUI's POST /prompt error body {"error", "node_errors"} (error is None when ok)."""
        return {"error": self.error, "node_errors": self.node_errors}

    def raise_if_invalid(self) -> None:
        if not self.ok:
            raise WorkflowValidationError(self.to_response())


def _error(kind: str, message: str, details: str, **extra: Any) -> dict[str, Any]:
    return {"type": kind, "message": message, "details": details, "extra_info": extra}


def types_compatible(received: str, expected: str) -> bool:
    """ComfyUI validate_node_input: equal, "*" on either side, or overlapping comma-separated unions."""
    if received == expected or "*" in (received, expected):
        return True
    got = {t.strip() for t in received.split(",")}
    want = {t.strip() for t in expected.split(",")}
    return bool(got & want)


def _convert(kind: str, value: Any) -> Any:
    """Value converted to the primitive `kind`; ValueError with a reason if it cannot be."""
    if kind == INT:
        if isinstance(value, bool):
            raise ValueError("a boolean is not a whole number")
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, (int, str)):
            return int(value)
        raise ValueError("not a whole number")
    if kind == FLOAT:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError("not a number")
        number = float(value)
        if not math.isfinite(number):
            raise ValueError("not a finite number")
        return number
    if kind == STRING:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ValueError("not text")
    if kind == BOOLEAN:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ValueError("not true or false")
    return value


def _check_link(name: str, link: Link, spec: InputSpec, graph: Graph, registry: NodeRegistry) -> dict | None:
    config = input_object_info(spec) if spec.type != COMBO else None
    if link.node_id not in graph:
        details = f"{name}: the linked node '{link.node_id}' is not in the prompt"
        return _error(
            "bad_linked_input",
            "Linked node does not exist",
            details,
            input_name=name,
            input_config=config,
            received_value=link.to_json(),
        )
    source = registry.get(graph[link.node_id].class_type)
    if not 0 <= link.slot < len(source.outputs):
        details = (
            f"{name}: node {link.node_id} ({source.class_type}) has {len(source.outputs)} output(s), "
            f"the link asks for output slot {link.slot}"
        )
        return _error(
            "bad_linked_input",
            "Linked output slot does not exist",
            details,
            input_name=name,
            input_config=config,
            received_value=link.to_json(),
        )
    received = source.outputs[link.slot].type
    if not types_compatible(received, spec.type):
        details = f"{name}, received_type({received}) mismatch input_type({spec.type})"
        return _error(
            "return_type_mismatch",
            "Return type mismatch between linked nodes",
            details,
            input_name=name,
            input_config=config,
            received_type=received,
            linked_node=link.to_json(),
        )
    return None


def _check_literal(node: GraphNode, spec: InputSpec) -> dict | None:
    """Check (and convert in place) one literal input value."""
    name, value = spec.name, node.inputs[spec.name]
    if isinstance(value, dict) and "__value__" in value:
        value = value["__value__"]  # the frontend wraps list-valued widgets this way
    if spec.type not in PRIMITIVE_TYPES:
        details = f"{name}: expects a link from a node that outputs {spec.type}, got the value {value!r}"
        return _error(
            "invalid_input_type",
            f"Input needs a {spec.type} connection",
            details,
            input_name=name,
            input_config=input_object_info(spec),
            received_value=value,
        )
    try:
        value = _convert(spec.type, value)
    except (ValueError, TypeError) as ex:
        return _error(
            "invalid_input_type",
            f"Failed to convert an input value to a {spec.type} value",
            f"{name}, {value!r}, {ex}",
            input_name=name,
            input_config=input_object_info(spec),
            received_value=value,
            exception_message=str(ex),
        )
    node.inputs[name] = value
    if spec.type in (INT, FLOAT):
        if spec.min is not None and value < spec.min:
            return _error(
                "value_smaller_than_min",
                f"Value {value} smaller than min of {spec.min}",
                name,
                input_name=name,
                input_config=input_object_info(spec),
                received_value=value,
            )
        if spec.max is not None and value > spec.max:
            return _error(
                "value_bigger_than_max",
                f"Value {value} bigger than max of {spec.max}",
                name,
                input_name=name,
                input_config=input_object_info(spec),
                received_value=value,
            )
    if spec.type == COMBO:
        choices = spec.resolved_choices()
        if choices is not None and value not in choices:
            listed = len(choices) <= _MAX_LISTED_CHOICES
            list_info = str(list(choices)) if listed else f"(list of length {len(choices)})"
            if not choices:
                list_info = "[] (no choices are available; is the file in the right folder?)"
            return _error(
                "value_not_in_list",
                "Value not in list",
                f"{name}: {value!r} not in {list_info}",
                input_name=name,
                input_config=input_object_info(spec) if listed else None,
                received_value=value,
            )
    return None


def _check_node(node: GraphNode, spec: NodeSpec, graph: Graph, registry: NodeRegistry) -> list[dict]:
    errors: list[dict] = []
    for input_spec in spec.inputs:
        name = input_spec.name
        if name not in node.inputs:
            if input_spec.required:
                errors.append(_error("required_input_missing", "Required input is missing", name, input_name=name))
            continue
        value = node.inputs[name]
        if isinstance(value, Link):
            problem = _check_link(name, value, input_spec, graph, registry)
        elif isinstance(value, (list, tuple)):
            problem = _error(
                "bad_linked_input",
                "Bad linked input, must be a length-2 list of [node_id, slot_index]",
                f"{name}: got {value!r}",
                input_name=name,
                received_value=value,
            )
        else:
            problem = _check_literal(node, input_spec)
        if problem is not None:
            errors.append(problem)
    if not errors and spec.validate_inputs is not None:
        literals = {k: v for k, v in node.inputs.items() if spec.input(k) is not None and not isinstance(v, Link)}
        verdict = spec.validate_inputs(**literals)
        if verdict is not True:
            details = verdict if isinstance(verdict, str) else "the node rejected its inputs"
            errors.append(_error("custom_validation_failed", "Custom validation failed for node", details))
    return errors


def _cycle_errors(graph: Graph, outputs: list[str]) -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = {}
    for cycle in graph.find_cycles(outputs):
        path = " -> ".join(f"{n} ({graph[n].class_type})" for n in cycle)
        members = list(dict.fromkeys(cycle))
        for node_id in members:
            found.setdefault(node_id, []).append(
                _error("dependency_cycle", "Dependency cycle detected", path, node_id=node_id, cycle_nodes=members)
            )
    return found


def _unknown_types(graph: Graph, registry: NodeRegistry) -> ValidationResult | None:
    node_errors = {}
    for node_id, node in graph.nodes.items():
        if node.class_type not in registry:
            title = node.title or node.class_type
            message = f"Node type '{node.class_type}' is not known to this server"
            error = _error(
                "missing_node_type",
                message,
                f"Node ID '#{node_id}'",
                node_id=node_id,
                class_type=node.class_type,
                node_title=title,
            )
            node_errors[node_id] = {"errors": [error], "dependent_outputs": [], "class_type": node.class_type}
    if not node_errors:
        return None
    node_id, entry = next(iter(node_errors.items()))
    top = _error(
        "invalid_prompt", f"Cannot execute because node {entry['class_type']} does not exist.", f"Node ID '#{node_id}'"
    )
    return ValidationResult(False, top, node_errors, [], graph)


def _copy_graph(graph: Graph) -> Graph:
    return Graph({k: GraphNode(n.id, n.class_type, dict(n.inputs), n.title) for k, n in graph.nodes.items()})


def validate(
    prompt: dict[str, Any] | Graph, registry: NodeRegistry, *, targets: Iterable[str] | None = None
) -> ValidationResult:
    """Validate an API-format prompt against `registry`. `targets` limits which output nodes run
    (ComfyUI partial_execution_targets). Never raises for a bad prompt: see `raise_if_invalid`."""
    if isinstance(prompt, Graph):
        graph = _copy_graph(prompt)
    else:
        graph, parse_error = parse_api_prompt_collecting(prompt)
        if parse_error is not None:
            return ValidationResult(False, parse_error["error"], parse_error["node_errors"], [], graph)
    unknown = _unknown_types(graph, registry)
    if unknown is not None:
        return unknown
    wanted = None if targets is None else {str(t) for t in targets}
    outputs = sorted(
        (
            n
            for n, node in graph.nodes.items()
            if registry.get(node.class_type).output_node and (wanted is None or n in wanted)
        ),
        key=node_sort_key,
    )
    if not outputs:
        details = "add an output node such as SaveImage or PreviewImage"
        return ValidationResult(False, _error("prompt_no_outputs", "Prompt has no outputs", details), {}, [], graph)
    per_node = _cycle_errors(graph, outputs)
    for node_id in sorted(graph.ancestors(outputs), key=node_sort_key):
        node = graph[node_id]
        try:
            problems = _check_node(node, registry.get(node.class_type), graph, registry)
        except Exception as ex:  # a choices_fn or similar failed: report it on the node
            problems = [
                _error(
                    "exception_during_validation",
                    "Exception when validating node",
                    str(ex),
                    exception_type=type(ex).__name__,
                )
            ]
        if problems:
            per_node.setdefault(node_id, []).extend(problems)
    return _summarize(graph, outputs, per_node)


def _summarize(graph: Graph, outputs: list[str], per_node: dict[str, list[dict]]) -> ValidationResult:
    node_errors: dict[str, Any] = {}
    good: list[str] = []
    for output in outputs:
        failing = [n for n in sorted(graph.ancestors([output]), key=node_sort_key) if n in per_node]
        if not failing:
            good.append(output)
        for node_id in failing:
            entry = node_errors.setdefault(
                node_id, {"errors": per_node[node_id], "dependent_outputs": [], "class_type": graph[node_id].class_type}
            )
            entry["dependent_outputs"].append(output)
    if good:
        return ValidationResult(True, None, node_errors, good, graph)
    # As ComfyUI: the details list only the failing output nodes' own errors; node_errors has the rest.
    lines = [f"{e['message']}: {e['details']}" for o in outputs for e in per_node.get(o, [])]
    top = _error("prompt_outputs_failed_validation", "Prompt outputs failed validation", "\n".join(lines))
    return ValidationResult(False, top, node_errors, [], graph)
