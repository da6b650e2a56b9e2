"""Toy node registries for the workflow-engine tests (no torch): arithmetic/string nodes, and
look-alikes of the real SD3.5 nodes built from ComfyUI's /object_info with dummy functions."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from sd35.errors import UserInputError
from sd35.workflow import InputSpec, NodeRegistry, NodeSpec, OutputSpec, spec_from_object_info

SHARED = Path("/work/shared")
WORKFLOWS = SHARED / "workflows"
SAMPLES = SHARED / "comfyui_api_samples"


def load_json(path: Path) -> Any:
    return json.loads(path.read_text())


class ToyWorld:
    """A toy registry plus the log of which nodes ran and knobs the tests turn."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.files = {"a.bin": 1.0, "b.bin": 2.0}  # file name -> content (a number)
        self.file_versions = {"a.bin": 0, "b.bin": 0}
        self.cancel_at_step: int | None = None
        self.registry = NodeRegistry(self._specs())

    def _record(self, context: Any) -> None:
        self.calls.append(context.node_id)

    def _specs(self) -> list[NodeSpec]:
        num = OutputSpec("NUMBER")
        text = OutputSpec("TEXT")
        world = self

        def number(value: float, context: Any) -> tuple:
            world._record(context)
            return (value,)

        def integer(value: int, context: Any) -> tuple:
            world._record(context)
            return (float(value),)

        def add(a: float, b: float, context: Any) -> tuple:
            world._record(context)
            return (a + b,)

        def scale(x: float, factor: float, context: Any, offset: float = 0.0) -> tuple:
            world._record(context)
            return (x * factor + offset,)

        def fmt(x: float, style: str, context: Any) -> tuple:
            world._record(context)
            return (f"{x:.2f}" if style == "fixed2" else f"{x:g}",)

        def concat(a: str, b: str, sep: str, context: Any) -> tuple:
            world._record(context)
            return (f"{a}{sep}{b}",)

        def slow(x: float, steps: int, context: Any) -> tuple:
            world._record(context)
            for step in range(1, steps + 1):
                context.report_progress(step, steps)
            return (x,)

        def boom(x: float, context: Any) -> tuple:
            world._record(context)
            raise UserInputError(f"cannot handle {x:g}")

        def crash(x: float, context: Any) -> tuple:
            world._record(context)
            raise ZeroDivisionError("division by zero")

        def load(name: str, context: Any) -> tuple:
            world._record(context)
            return (world.files[name],)

        def pair(x: float, context: Any) -> tuple:
            world._record(context)
            return (x, f"<{x:g}>")

        def show(text: str, context: Any, prompt: Any = None, unique_id: Any = None) -> dict:
            world._record(context)
            return {"ui": {"text": [text], "prompt_nodes": [len(prompt)], "id": [unique_id]}, "result": ()}

        def show_number(x: float, context: Any) -> dict:
            world._record(context)
            return {"ui": {"value": [x]}}

        def wrong_arity(x: float, context: Any) -> tuple:
            world._record(context)
            return (x, x)

        def n(name: str, **kw: Any) -> InputSpec:
            return InputSpec(name, "NUMBER", **kw)

        def f(name: str, default: float, **kw: Any) -> InputSpec:
            return InputSpec(name, "FLOAT", default=default, **kw)

        return [
            NodeSpec("Number", (f("value", 0.0, min=-1e6, max=1e6),), (num,), number, category="toy"),
            NodeSpec("Int", (InputSpec("value", "INT", default=0, min=0, max=100),), (num,), integer),
            NodeSpec("Add", (n("a"), n("b")), (num,), add),
            NodeSpec(
                "Scale", (n("x"), f("factor", 1.0, min=-10, max=10), f("offset", 0.0, required=False)), (num,), scale
            ),
            NodeSpec("Format", (n("x"), InputSpec("style", "COMBO", choices=("plain", "fixed2"))), (text,), fmt),
            NodeSpec(
                "Concat",
                (InputSpec("a", "TEXT"), InputSpec("b", "TEXT"), InputSpec("sep", "STRING", default=" ")),
                (text,),
                concat,
            ),
            NodeSpec("Slow", (n("x"), InputSpec("steps", "INT", default=3, min=1, max=1000)), (num,), slow),
            NodeSpec("Boom", (n("x"),), (num,), boom),
            NodeSpec("Crash", (n("x"),), (num,), crash),
            NodeSpec(
                "Load",
                (InputSpec("name", "COMBO", choices_fn=lambda: sorted(world.files)),),
                (num,),
                load,
                fingerprint=lambda name: world.file_versions.get(name),
            ),
            NodeSpec("Pair", (n("x"),), (num, text), pair),
            NodeSpec("Show", (InputSpec("text", "TEXT"),), (), show, output_node=True, hidden=("prompt", "unique_id")),
            NodeSpec("ShowNumber", (n("x"),), (), show_number, output_node=True),
            NodeSpec("WrongArity", (n("x"),), (num,), wrong_arity),
        ]


def link(node_id: str, slot: int = 0) -> list:
    return [node_id, slot]


def chain_prompt() -> dict[str, Any]:
    """1,2 Numbers -> 3 Add -> 4 Scale -> 5 Format -> 6 Show; 7 Number -> 8 ShowNumber; 9 unused Add."""
    return {
        "1": {"class_type": "Number", "inputs": {"value": 2.0}},
        "2": {"class_type": "Number", "inputs": {"value": 3.0}},
        "3": {"class_type": "Add", "inputs": {"a": link("1"), "b": link("2")}},
        "4": {"class_type": "Scale", "inputs": {"x": link("3"), "factor": 10.0}},
        "5": {"class_type": "Format", "inputs": {"x": link("4"), "style": "plain"}},
        "6": {"class_type": "Show", "inputs": {"text": link("5")}},
        "7": {"class_type": "Number", "inputs": {"value": 7.0}},
        "8": {"class_type": "ShowNumber", "inputs": {"x": link("7")}},
        "9": {"class_type": "Add", "inputs": {"a": link("1"), "b": link("7")}},
    }


# File names the SD3.5 workflows use, offered as the choices of the (blanked) model-file COMBOs.
MODEL_FILES = {
    "ckpt_name": ["sd3.5_medium.safetensors", "sd3.5_large_fp8_scaled.safetensors"],
    "clip_name1": ["clip_g.safetensors", "clip_l.safetensors", "t5xxl_fp16.safetensors"],
    "clip_name2": ["clip_g.safetensors", "clip_l.safetensors", "t5xxl_fp16.safetensors"],
    "clip_name3": ["clip_g.safetensors", "clip_l.safetensors", "t5xxl_fp16.safetensors"],
}


def sd3_lookalike_registry(calls: list[str] | None = None) -> NodeRegistry:
    """Every node of object_info_sd3_subset.json with its real inputs, order and outputs; each
    function returns strings naming the node, output nodes report a fake image."""
    registry = NodeRegistry()
    calls = calls if calls is not None else []
    for class_type, info in load_json(SAMPLES / "object_info_sd3_subset.json").items():

        def function(*, context: Any, _ct: str = class_type, _n: int = len(info["output"]), **kwargs: Any) -> Any:
            calls.append(context.node_id)
            if _n == 0:
                return {"ui": {"images": [{"filename": f"{context.node_id}.png", "subfolder": "", "type": "temp"}]}}
            return tuple(f"{_ct}#{context.node_id}:{i}" for i in range(_n))

        spec = spec_from_object_info(info, function)
        inputs = tuple(
            InputSpec(
                i.name,
                i.type,
                required=i.required,
                choices_fn=lambda k=i.name: MODEL_FILES[k],
                combo_style=i.combo_style,
                tooltip=i.tooltip,
                extra=i.extra,
            )
            if i.name in MODEL_FILES
            else i
            for i in spec.inputs
        )
        registry.register(dataclasses.replace(spec, inputs=inputs))
    return registry
