"""Node schemas: what a node takes, returns and calls. Type names are opaque strings; only the
primitives (INT, FLOAT, STRING, BOOLEAN, COMBO) are value-checked and shown as widgets by the frontend."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

INT, FLOAT, STRING, BOOLEAN, COMBO = "INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"
PRIMITIVE_TYPES = frozenset({INT, FLOAT, STRING, BOOLEAN, COMBO})

# Hidden inputs the executor fills in (ComfyUI INPUT_TYPES()["hidden"]); name -> object_info kind.
HIDDEN_KINDS = {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO", "unique_id": "UNIQUE_ID"}


@dataclass(frozen=True)
class InputSpec:
    """One input socket or widget (ComfyUI `INPUT_TYPES` entry).

    `choices` is a fixed list; `choices_fn` is called whenever the list is needed (validation,
    /object_info) so file lists stay current. `control_after_generate` marks an INT (seed) whose UI
    widget is followed by a hidden "fixed/increment/decrement/randomize" widget in `widgets_values`.
    `combo_style` picks the /object_info shape of a COMBO: "legacy" = [[choices...], opts],
    "v3" = ["COMBO", {"options": [...], "multiselect": false, ...}]. `extra` holds further
    /object_info options copied verbatim (key, value) pairs."""

    name: str
    type: str
    required: bool = True
    default: Any = None
    min: int | float | None = None
    max: int | float | None = None
    step: int | float | None = None
    round: float | None = None
    choices: tuple[str, ...] | None = None
    choices_fn: Callable[[], Sequence[str]] | None = None
    multiline: bool = False
    dynamic_prompts: bool = False
    control_after_generate: bool = False
    image_upload: bool = False
    force_input: bool = False
    advanced: bool = False
    tooltip: str | None = None
    combo_style: Literal["legacy", "v3"] = "legacy"
    extra: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if self.choices is not None and not isinstance(self.choices, tuple):
            object.__setattr__(self, "choices", tuple(self.choices))
        if (self.choices is not None or self.choices_fn is not None) and self.type != COMBO:
            raise ValueError(f"input {self.name!r}: choices need type COMBO, not {self.type}")

    @property
    def is_widget(self) -> bool:
        """True if the frontend draws this input as a widget (and stores it in widgets_values)."""
        return self.type in PRIMITIVE_TYPES and not self.force_input

    @property
    def extra_widget_slots(self) -> int:
        """widgets_values entries that follow this widget but are not sent to the server:
        control_after_generate's mode and image_upload's "upload" button value."""
        return int(self.control_after_generate) + int(self.image_upload)

    def resolved_choices(self) -> tuple[str, ...] | None:
        """The allowed values now (calls `choices_fn`), or None if any value is allowed."""
        if self.choices_fn is not None:
            return tuple(self.choices_fn())
        return self.choices


@dataclass(frozen=True)
class OutputSpec:
    """One output socket (ComfyUI RETURN_TYPES / RETURN_NAMES / OUTPUT_TOOLTIPS / OUTPUT_IS_LIST)."""

    type: str
    name: str | None = None
    tooltip: str | None = None
    is_list: bool = False

    @property
    def display_name(self) -> str:
        return self.name if self.name is not None else self.type


@dataclass(frozen=True)
class NodeSpec:
    """A node type. `function(**inputs, context=NodeContext)` returns a tuple matching `outputs`;
    an output node may instead return {"ui": {...}, "result": tuple}.

    `hidden` names hidden inputs the executor supplies ("prompt", "extra_pnginfo", "unique_id").
    `fingerprint(**literal_inputs)` is ComfyUI's IS_CHANGED: its value joins the cache key, so a node
    that reads an external file can return e.g. the file's mtime; NaN means "always re-run".
    `not_idempotent` adds the node id to the cache key (two identical nodes never share outputs).
    `validate_inputs(**literal_inputs)` is ComfyUI's VALIDATE_INPUTS: called after the built-in checks
    pass, it returns True, or False / a message that is reported as custom_validation_failed."""

    class_type: str
    inputs: tuple[InputSpec, ...]
    outputs: tuple[OutputSpec, ...]
    function: Callable[..., Any]
    output_node: bool = False
    category: str = ""
    display_name: str | None = None
    description: str = ""
    hidden: tuple[str, ...] = ()
    fingerprint: Callable[..., Any] | None = None
    not_idempotent: bool = False
    validate_inputs: Callable[..., bool | str] | None = None
    python_module: str = "nodes"
    deprecated: bool = False
    experimental: bool = False

    def __post_init__(self) -> None:
        for name in ("inputs", "outputs", "hidden"):
            value = getattr(self, name)
            if not isinstance(value, tuple):
                object.__setattr__(self, name, tuple(value))
        names = [i.name for i in self.inputs]
        if len(set(names)) != len(names):
            raise ValueError(f"{self.class_type}: duplicate input names {names}")
        unknown = [h for h in self.hidden if h not in HIDDEN_KINDS]
        if unknown:
            raise ValueError(f"{self.class_type}: unknown hidden inputs {unknown}; known: {sorted(HIDDEN_KINDS)}")

    def input(self, name: str) -> InputSpec | None:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        return None

    @property
    def ordered_inputs(self) -> tuple[InputSpec, ...]:
        """Required inputs, then optional ones, each in declaration order (ComfyUI input_order)."""
        return tuple(i for i in self.inputs if i.required) + tuple(i for i in self.inputs if not i.required)

    @property
    def widget_inputs(self) -> tuple[InputSpec, ...]:
        """Inputs that occupy widgets_values slots, in the frontend's widget order."""
        return tuple(i for i in self.ordered_inputs if i.is_widget)

    @property
    def title(self) -> str:
        return self.display_name or self.class_type
