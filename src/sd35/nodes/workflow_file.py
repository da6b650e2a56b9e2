"""Workflow files for `sd35 run`: read a workflow (API or UI JSON, or a PNG written by sd35 or ComfyUI),
apply `NODE.INPUT=VALUE` overrides to both the API prompt and the UI workflow, and explain validation
errors about missing files (naming the folder that was searched).

A PNG's `prompt` chunk is what ComfyUI executed, so it is what runs; its `workflow` chunk (the UI graph)
is carried along, overrides applied, into the PNGs this run writes.
"""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sd35.errors import UserInputError
from sd35.imageio.images import read_png_text
from sd35.nodes.paths import MODEL_FOLDERS
from sd35.nodes.services import Services
from sd35.workflow import InputSpec, NodeRegistry, is_ui_format, load_prompt_text, ui_to_api

log = logging.getLogger(__name__)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# (class_type, input) -> model folder kind, for "file not found" explanations
MODEL_INPUTS = {
    ("CheckpointLoaderSimple", "ckpt_name"): "checkpoints",
    ("TripleCLIPLoader", "clip_name1"): "text_encoders",
    ("TripleCLIPLoader", "clip_name2"): "text_encoders",
    ("TripleCLIPLoader", "clip_name3"): "text_encoders",
    ("DualCLIPLoader", "clip_name1"): "text_encoders",
    ("DualCLIPLoader", "clip_name2"): "text_encoders",
    ("CLIPLoader", "clip_name"): "text_encoders",
    ("VAELoader", "vae_name"): "vae",
    ("UNETLoader", "unet_name"): "diffusion_models",
}


@dataclass(frozen=True)
class WorkflowFile:
    """An API prompt to run and, when known, the UI workflow it came from (for the PNG `workflow` chunk)."""

    prompt: dict[str, Any]
    workflow: dict[str, Any] | None
    source: Path


def _json_chunk(text: str, key: str, path: Path) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserInputError(f"{path}: the PNG's {key!r} chunk is not valid JSON ({exc})") from None


def read_workflow(path: str | Path, registry: NodeRegistry) -> WorkflowFile:
    """The workflow in `path`: API JSON, UI JSON (converted with the registry's input order), or a PNG's
    `prompt`/`workflow` text chunks. Raises UserInputError / WorkflowValidationError with the reason."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserInputError(f"cannot read workflow {path}: {exc.strerror or exc}") from None
    if data.startswith(PNG_MAGIC):
        chunks = read_png_text(path)
        workflow = _json_chunk(chunks["workflow"], "workflow", path) if "workflow" in chunks else None
        if "prompt" in chunks:
            prompt = _json_chunk(chunks["prompt"], "prompt", path)
        elif workflow is not None:
            prompt = ui_to_api(workflow, registry)
        else:
            raise UserInputError(f"{path} holds no workflow (no 'prompt' or 'workflow' PNG text chunk)")
        return WorkflowFile(prompt, workflow if is_ui_format(workflow) else None, path)
    prompt = load_prompt_text(data, registry)  # WorkflowValidationError for bad JSON or a broken UI graph
    raw = json.loads(data)
    return WorkflowFile(prompt, raw if is_ui_format(raw) else None, path)


# --- overrides -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Override:
    """`--set NODE.INPUT=VALUE`: NODE is a node id, a title or a class type (when unique)."""

    node: str
    input: str
    value: str

    @classmethod
    def parse(cls, text: str) -> Override:
        target, sep, value = text.partition("=")
        node, dot, name = target.rpartition(".")
        if not sep or not dot or not node or not name:
            raise UserInputError(f'--set {text!r}: expected NODE.INPUT=VALUE (e.g. 6.text="a cat", 294.seed=5)')
        return cls(node.strip(), name.strip(), value)


def _find_node(prompt: dict[str, Any], key: str) -> str:
    if key in prompt:
        return key
    for field in ("title", "class_type"):
        if field == "title":
            hits = [n for n, v in prompt.items() if (v.get("_meta") or {}).get("title") == key]
        else:
            hits = [n for n, v in prompt.items() if v.get("class_type") == key]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise UserInputError(f"--set: {key!r} matches several nodes ({', '.join(hits)}); use a node id")
    raise UserInputError(f"--set: no node {key!r} in the workflow (node ids: {', '.join(prompt)})")


def convert_value(spec: InputSpec, raw: str) -> Any:
    """The text of an override as the input's type (INT, FLOAT, BOOLEAN; text for everything else)."""
    try:
        if spec.type == "INT":
            return int(raw)
        if spec.type == "FLOAT":
            return float(raw)
    except ValueError:
        raise UserInputError(f"--set {spec.name}={raw!r}: {spec.name} needs a {spec.type} value") from None
    if spec.type == "BOOLEAN":
        if raw.lower() not in ("true", "false", "1", "0"):
            raise UserInputError(f"--set {spec.name}={raw!r}: {spec.name} needs true or false")
        return raw.lower() in ("true", "1")
    return raw


def _widget_slot(spec: Any, name: str) -> tuple[int, list[tuple[int, InputSpec]]]:
    """(position of widget `name` in widgets_values, every widget with its position)."""
    slots, position = [], 0
    for widget in spec.widget_inputs:
        slots.append((position, widget))
        position += 1 + widget.extra_widget_slots
    return next(p for p, w in slots if w.name == name), slots


def _set_ui_value(workflow: dict[str, Any], node_id: str, spec: Any, name: str, value: Any) -> None:
    node = next((n for n in workflow.get("nodes", []) if str(n.get("id")) == node_id), None)
    if node is None:
        log.warning("the UI workflow has no node %s; its copy in the PNG keeps the old %s", node_id, name)
        return
    values = node.get("widgets_values")
    if isinstance(values, dict):
        values[name] = value
        return
    index, slots = _widget_slot(spec, name)
    values = list(values or [])
    for position, widget in slots:  # a short list: fill what the frontend would have stored
        if position >= len(values):
            values += [widget.default] + ["fixed"] * widget.extra_widget_slots
    values[index] = value
    node["widgets_values"] = values


def apply_overrides(wf: WorkflowFile, overrides: list[Override], registry: NodeRegistry) -> WorkflowFile:
    """New WorkflowFile with each override applied to the API prompt and to the UI workflow's widget."""
    prompt = copy.deepcopy(wf.prompt)
    workflow = copy.deepcopy(wf.workflow)
    for item in overrides:
        if not isinstance(prompt, dict):
            raise UserInputError("--set: the workflow is not a JSON object")
        node_id = _find_node(prompt, item.node)
        node = prompt[node_id]
        spec = registry.find(node.get("class_type"))
        if spec is None:
            raise UserInputError(f"--set: node {node_id} has unknown type {node.get('class_type')!r}")
        input_spec = spec.input(item.input)
        if input_spec is None:
            names = ", ".join(i.name for i in spec.inputs)
            raise UserInputError(
                f"--set: node {node_id} ({spec.class_type}) has no input {item.input!r}; it has {names}"
            )
        current = (node.get("inputs") or {}).get(item.input)
        if isinstance(current, list) or not input_spec.is_widget:
            raise UserInputError(
                f"--set: input {item.input!r} of node {node_id} is a connection, not a value; "
                "set the node it comes from"
            )
        value = convert_value(input_spec, item.value)
        node.setdefault("inputs", {})[item.input] = value
        if workflow is not None:
            _set_ui_value(workflow, node_id, spec, item.input, value)
    return WorkflowFile(prompt, workflow, wf.source)


# --- error explanations --------------------------------------------------------------------------------


def explain_missing_files(response: dict[str, Any], prompt: dict[str, Any], services: Services) -> dict[str, Any]:
    """A copy of a validation error body whose "value not in list" errors on model-file and image inputs
    say which folders were searched (ComfyUI's body only lists the choices)."""
    out = copy.deepcopy(response)
    for node_id, entry in (out.get("node_errors") or {}).items():
        class_type = entry.get("class_type")
        for error in entry.get("errors", []):
            name = (error.get("extra_info") or {}).get("input_name")
            if error.get("type") != "value_not_in_list":
                continue
            value = ((prompt.get(node_id) or {}).get("inputs") or {}).get(name)
            kind = MODEL_INPUTS.get((class_type, name))
            if kind in MODEL_FOLDERS:
                where = services.models.describe(kind)
                error["details"] = f"{name}: model file {value!r} not found in {where}"
            elif (class_type, name) == ("LoadImage", "image"):
                error["details"] = f"{name}: image {value!r} not found in the input folder ({services.input_dir})"
    return out
