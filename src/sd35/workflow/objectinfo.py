"""NodeSpec <-> ComfyUI `/object_info` JSON (input.required/optional/hidden, input_order, output, ...).

`node_object_info` is what GET /object_info/{class} returns; `spec_from_object_info` reads that shape
back (used to build look-alike specs from a saved /object_info, e.g. in tests)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .spec import COMBO, HIDDEN_KINDS, InputSpec, NodeSpec, OutputSpec

# InputSpec field <-> /object_info option key, for the options that are emitted only when set.
_FLAG_OPTIONS = {
    "multiline": "multiline",
    "dynamic_prompts": "dynamicPrompts",
    "control_after_generate": "control_after_generate",
    "image_upload": "image_upload",
    "force_input": "forceInput",
    "advanced": "advanced",
}
_VALUE_OPTIONS = {"default": "default", "min": "min", "max": "max", "step": "step", "round": "round"}


def input_object_info(spec: InputSpec) -> list[Any]:
    """[type, options] as ComfyUI lists one input; a legacy COMBO's type is its list of choices.
    The options dict is left out when empty (as ComfyUI does for e.g. "images": ["IMAGE"])."""
    options: dict[str, Any] = {}
    for field, key in _VALUE_OPTIONS.items():
        value = getattr(spec, field)
        if value is not None:
            options[key] = value
    for field, key in _FLAG_OPTIONS.items():
        if getattr(spec, field):
            options[key] = True
    if spec.tooltip is not None:
        options["tooltip"] = spec.tooltip
    type_field: Any = spec.type
    if spec.type == COMBO:
        choices = list(spec.resolved_choices() or ())
        if spec.combo_style == "v3":
            options["multiselect"] = False
            options["options"] = choices
        else:
            type_field = choices
    options.update(dict(spec.extra))
    return [type_field, options] if options else [type_field]


def node_object_info(spec: NodeSpec) -> dict[str, Any]:
    """ComfyUI's /object_info entry for one node type."""
    required = {i.name: input_object_info(i) for i in spec.inputs if i.required}
    optional = {i.name: input_object_info(i) for i in spec.inputs if not i.required}
    inputs: dict[str, Any] = {"required": required}
    order: dict[str, list[str]] = {"required": list(required)}
    if optional:
        inputs["optional"] = optional
        order["optional"] = list(optional)
    if spec.hidden:
        inputs["hidden"] = {name: HIDDEN_KINDS[name] for name in spec.hidden}
        order["hidden"] = list(spec.hidden)
    info: dict[str, Any] = {
        "input": inputs,
        "input_order": order,
        "output": [o.type for o in spec.outputs],
        "output_is_list": [o.is_list for o in spec.outputs],
        "output_name": [o.display_name for o in spec.outputs],
        "name": spec.class_type,
        "display_name": spec.display_name,
        "description": spec.description,
        "python_module": spec.python_module,
        "category": spec.category,
        "output_node": spec.output_node,
    }
    if any(o.tooltip is not None for o in spec.outputs):
        info["output_tooltips"] = [o.tooltip for o in spec.outputs]
    if spec.deprecated:
        info["deprecated"] = True
    if spec.experimental:
        info["experimental"] = True
    return info


def _input_from_object_info(name: str, entry: list[Any], required: bool) -> InputSpec:
    type_field = entry[0]
    options = dict(entry[1]) if len(entry) > 1 and isinstance(entry[1], dict) else {}
    kwargs: dict[str, Any] = {"name": name, "required": required}
    if isinstance(type_field, list):
        kwargs.update(type=COMBO, choices=tuple(type_field))
    elif type_field == COMBO:
        kwargs.update(type=COMBO, combo_style="v3", choices=tuple(options.pop("options", ())))
        if options.get("multiselect") is False:
            options.pop("multiselect")
    else:
        kwargs["type"] = type_field
    for field, key in _VALUE_OPTIONS.items():
        if key in options and options[key] is not None:
            kwargs[field] = options.pop(key)
    for field, key in _FLAG_OPTIONS.items():
        if options.get(key) is True:
            options.pop(key)
            kwargs[field] = True
    if isinstance(options.get("tooltip"), str):
        kwargs["tooltip"] = options.pop("tooltip")
    kwargs["extra"] = tuple(options.items())
    return InputSpec(**kwargs)


def spec_from_object_info(info: dict[str, Any], function: Callable[..., Any]) -> NodeSpec:
    """A NodeSpec with the inputs, input order and outputs of a /object_info entry, calling `function`."""
    order = info.get("input_order") or {}
    inputs: list[InputSpec] = []
    for section, required in (("required", True), ("optional", False)):
        entries = info["input"].get(section, {})
        for name in order.get(section, list(entries)):
            inputs.append(_input_from_object_info(name, entries[name], required))
    tooltips = info.get("output_tooltips") or [None] * len(info["output"])
    names = info.get("output_name") or info["output"]
    is_list = info.get("output_is_list") or [False] * len(info["output"])
    outputs = tuple(
        OutputSpec(type=t, name=n, tooltip=tip, is_list=bool(lst))
        for t, n, tip, lst in zip(info["output"], names, tooltips, is_list)
    )
    return NodeSpec(
        class_type=info["name"],
        inputs=tuple(inputs),
        outputs=outputs,
        function=function,
        output_node=bool(info.get("output_node", False)),
        category=info.get("category", ""),
        display_name=info.get("display_name"),
        description=info.get("description", ""),
        hidden=tuple(info["input"].get("hidden", {})),
        python_module=info.get("python_module", "nodes"),
        deprecated=bool(info.get("deprecated", False)),
        experimental=bool(info.get("experimental", False)),
    )
