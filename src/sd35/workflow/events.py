"""What the executor reports while it runs, the cancel token, and the context handed to node functions.

Each event's `to_comfy_message()` gives ComfyUI's websocket JSON {"type", "data"} (see
comfyui_api_samples/ws_messages_one_per_type.json), so a server only forwards it."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from .errors import WorkflowCancelled


def now_ms() -> int:
    """Wall-clock milliseconds, the unit of ComfyUI's event timestamps."""
    return int(time.time() * 1000)


@dataclass(frozen=True)
class ExecutionStart:
    prompt_id: str = ""
    timestamp: int = field(default_factory=now_ms)

    def to_comfy_message(self) -> dict[str, Any]:
        return {"type": "execution_start", "data": {"prompt_id": self.prompt_id, "timestamp": self.timestamp}}


@dataclass(frozen=True)
class ExecutionCached:
    """Nodes whose outputs come from the cache (sent once, before any node runs)."""

    nodes: tuple[str, ...]
    prompt_id: str = ""
    timestamp: int = field(default_factory=now_ms)

    def to_comfy_message(self) -> dict[str, Any]:
        data = {"nodes": list(self.nodes), "prompt_id": self.prompt_id, "timestamp": self.timestamp}
        return {"type": "execution_cached", "data": data}


@dataclass(frozen=True)
class Executing:
    """`node` starts running; node=None after the prompt has finished (ComfyUI's "done" signal)."""

    node: str | None
    prompt_id: str = ""

    def to_comfy_message(self) -> dict[str, Any]:
        data = {"node": self.node, "display_node": self.node, "prompt_id": self.prompt_id}
        return {"type": "executing", "data": data}


@dataclass(frozen=True)
class Progress:
    node: str
    value: int | float
    max: int | float
    prompt_id: str = ""

    def to_comfy_message(self) -> dict[str, Any]:
        data = {"value": self.value, "max": self.max, "prompt_id": self.prompt_id, "node": self.node}
        return {"type": "progress", "data": data}


@dataclass(frozen=True)
class Executed:
    """An output node produced UI output, e.g. {"images": [{"filename", "subfolder", "type"}]}."""

    node: str
    output: dict[str, Any]
    prompt_id: str = ""

    def to_comfy_message(self) -> dict[str, Any]:
        data = {"node": self.node, "display_node": self.node, "output": self.output, "prompt_id": self.prompt_id}
        return {"type": "executed", "data": data}


@dataclass(frozen=True)
class ExecutionError:
    """A node raised. No traceback is sent (it is logged); `message` is meant for a person."""

    node: str
    class_type: str
    message: str
    exception_type: str = ""
    executed: tuple[str, ...] = ()
    current_inputs: dict[str, Any] = field(default_factory=dict)
    prompt_id: str = ""
    timestamp: int = field(default_factory=now_ms)

    def to_comfy_message(self) -> dict[str, Any]:
        data = {
            "prompt_id": self.prompt_id,
            "node_id": self.node,
            "node_type": self.class_type,
            "executed": list(self.executed),
            "exception_message": self.message,
            "exception_type": self.exception_type,
            "traceback": [],
            "current_inputs": self.current_inputs,
            "current_outputs": list(self.executed),
            "timestamp": self.timestamp,
        }
        return {"type": "execution_error", "data": data}


@dataclass(frozen=True)
class ExecutionInterrupted:
    node: str | None
    class_type: str | None
    executed: tuple[str, ...] = ()
    prompt_id: str = ""
    timestamp: int = field(default_factory=now_ms)

    def to_comfy_message(self) -> dict[str, Any]:
        data = {
            "prompt_id": self.prompt_id,
            "node_id": self.node,
            "node_type": self.class_type,
            "executed": list(self.executed),
            "timestamp": self.timestamp,
        }
        return {"type": "execution_interrupted", "data": data}


@dataclass(frozen=True)
class ExecutionSuccess:
    prompt_id: str = ""
    timestamp: int = field(default_factory=now_ms)

    def to_comfy_message(self) -> dict[str, Any]:
        data = {"prompt_id": self.prompt_id, "timestamp": self.timestamp}
        return {"type": "execution_success", "data": data}


Event = (
    ExecutionStart
    | ExecutionCached
    | Executing
    | Progress
    | Executed
    | ExecutionError
    | ExecutionInterrupted
    | ExecutionSuccess
)


class EventSink(Protocol):
    """Anything callable with one event (a list's append, a websocket broadcaster, ...)."""

    def __call__(self, event: Event) -> None: ...


class CancelToken:
    """Thread-safe cancel flag: `cancel()` from any thread; running code calls `raise_if_cancelled()`."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    def clear(self) -> None:
        self._event.clear()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        """Raise sd35.errors.Cancelled (a WorkflowCancelled) if `cancel()` was called."""
        if self._event.is_set():
            raise WorkflowCancelled(None, None, [])

    def wait(self, timeout: float | None = None) -> bool:
        """Block until cancelled or `timeout` seconds pass; True if cancelled."""
        return self._event.wait(timeout)


def _drop_event(event: Event) -> None:
    return None


@dataclass
class NodeContext:
    """Passed to every node function as the keyword argument `context`.

    `prompt` is the validated API prompt and `extra` the caller's extra data (e.g.
    {"extra_pnginfo": {"workflow": ...}}), both for PNG metadata. `report_progress` emits a
    Progress event and then stops the node (raises Cancelled) if cancellation was requested."""

    node_id: str
    prompt_id: str = ""
    cancel: CancelToken = field(default_factory=CancelToken)
    extra: Mapping[str, Any] = field(default_factory=dict)
    prompt: Mapping[str, Any] = field(default_factory=dict)
    emit: EventSink = _drop_event

    def report_progress(self, value: int | float, max: int | float) -> None:
        self.emit(Progress(self.node_id, value, max, self.prompt_id))
        self.cancel.raise_if_cancelled()

    def check_cancelled(self) -> None:
        """Raise Cancelled if cancellation was requested (call between chunks of long work)."""
        self.cancel.raise_if_cancelled()
