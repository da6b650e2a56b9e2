"""Run a validated prompt: only what the output nodes need, dependencies first, reusing cached
outputs, reporting events, stoppable between and inside nodes (ComfyUI `execution.py` semantics)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sd35.errors import Cancelled, SD35Error

from .cache import CacheEntry, OutputCache, Signature, node_signatures
from .errors import NodeExecutionError, WorkflowCancelled
from .events import (
    CancelToken,
    Event,
    EventSink,
    Executed,
    Executing,
    ExecutionCached,
    ExecutionError,
    ExecutionInterrupted,
    ExecutionStart,
    ExecutionSuccess,
    NodeContext,
)
from .graph import Graph, GraphNode, Link
from .registry import NodeRegistry
from .spec import NodeSpec
from .validate import validate

log = logging.getLogger(__name__)


@dataclass
class ExecutionResult:
    """`outputs`: output tuple of every node that ran or came from the cache; `ui_outputs`: the UI
    dict of each node that reported one (what /history shows); `node_errors`: output nodes skipped
    because they failed validation while others ran (ComfyUI's partial run)."""

    prompt_id: str
    outputs: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    ui_outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    executed: list[str] = field(default_factory=list)
    cached: list[str] = field(default_factory=list)
    output_nodes: list[str] = field(default_factory=list)
    node_errors: dict[str, Any] = field(default_factory=dict)


def _normalize_result(result: Any, spec: NodeSpec) -> tuple[tuple[Any, ...], dict[str, Any] | None]:
    """(outputs, ui) from what a node function returned: a tuple, or {"ui": ..., "result": ...}."""
    ui = None
    if isinstance(result, dict):
        ui = result.get("ui")
        result = result.get("result", ())
    if result is None:
        result = ()
    if not isinstance(result, (tuple, list)):
        raise TypeError(f"returned {type(result).__name__}, expected a tuple of {len(spec.outputs)} output(s)")
    if len(result) != len(spec.outputs):
        raise TypeError(f"returned {len(result)} value(s) but declares {len(spec.outputs)} output(s)")
    if ui is not None and not isinstance(ui, dict):
        raise TypeError(f"returned a 'ui' of type {type(ui).__name__}, expected a dict")
    return tuple(result), ui


def _error_message(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, SD35Error) else f"{type(exc).__name__}: {exc}"


def _literal_inputs(node: GraphNode) -> dict[str, Any]:
    simple = (str, int, float, bool, type(None))
    return {k: v for k, v in node.inputs.items() if isinstance(v, simple)}


class _Run:
    """State of one execute() call."""

    def __init__(
        self,
        graph: Graph,
        registry: NodeRegistry,
        cache: OutputCache,
        sink: EventSink | None,
        cancel: CancelToken,
        prompt_id: str,
        extra: dict[str, Any],
    ) -> None:
        self.graph, self.registry, self.cache = graph, registry, cache
        self.sink, self.cancel, self.prompt_id, self.extra = sink, cancel, prompt_id, extra
        self.prompt_json = graph.to_api()
        self.result = ExecutionResult(prompt_id)

    def emit(self, event: Event) -> None:
        """Send an event; a failing sink (closed websocket, ...) must not stop the run."""
        if self.sink is None:
            return
        try:
            self.sink(event)
        except Exception:
            log.exception("event sink failed on %s", type(event).__name__)

    def run(self, order: list[str], signatures: dict[str, Signature]) -> ExecutionResult:
        self.emit(ExecutionStart(self.prompt_id))
        hits = {}
        for node_id in order:
            entry = self.cache.get(signatures[node_id].key) if signatures[node_id].cacheable else None
            if entry is not None:
                hits[node_id] = entry
        self.emit(ExecutionCached(tuple(hits), self.prompt_id))
        for node_id in order:
            entry = hits.get(node_id)
            if entry is None:
                self.cancel.raise_if_cancelled()
                if signatures[node_id].cacheable:  # an identical node earlier in this run
                    entry = self.cache.get(signatures[node_id].key)
            if entry is not None:
                self._use_cached(node_id, entry)
            else:
                self._run_node(node_id, signatures[node_id])
        self.emit(ExecutionSuccess(self.prompt_id))
        return self.result

    def _use_cached(self, node_id: str, entry: CacheEntry) -> None:
        self.result.outputs[node_id] = entry.outputs
        self.result.cached.append(node_id)
        if entry.ui:
            self.result.ui_outputs[node_id] = entry.ui
            self.emit(Executed(node_id, entry.ui, self.prompt_id))

    def _kwargs(self, node: GraphNode, spec: NodeSpec) -> dict[str, Any]:
        kwargs: dict[str, Any] = {}
        for input_spec in spec.inputs:
            if input_spec.name in node.inputs:
                value = node.inputs[input_spec.name]
                if isinstance(value, Link):
                    value = self.result.outputs[value.node_id][value.slot]
                kwargs[input_spec.name] = value
        hidden = {"prompt": self.prompt_json, "extra_pnginfo": self.extra.get("extra_pnginfo"), "unique_id": node.id}
        for name in spec.hidden:
            kwargs[name] = hidden[name]
        kwargs["context"] = NodeContext(node.id, self.prompt_id, self.cancel, self.extra, self.prompt_json, self.emit)
        return kwargs

    def _run_node(self, node_id: str, signature: Signature) -> None:
        node = self.graph[node_id]
        spec = self.registry.get(node.class_type)
        self.emit(Executing(node_id, self.prompt_id))
        try:
            outputs, ui = _normalize_result(spec.function(**self._kwargs(node, spec)), spec)
        except Cancelled:
            raise
        except Exception as exc:
            message = _error_message(exc)
            log.error(
                "node %s (%s) failed: %s", node_id, node.class_type, message, exc_info=not isinstance(exc, SD35Error)
            )
            self.emit(
                ExecutionError(
                    node_id,
                    node.class_type,
                    message,
                    type(exc).__name__,
                    tuple(self.result.executed),
                    _literal_inputs(node),
                    self.prompt_id,
                )
            )
            raise NodeExecutionError(node_id, node.class_type, message, type(exc).__name__) from exc
        self.result.outputs[node_id] = outputs
        self.result.executed.append(node_id)
        if signature.cacheable:
            self.cache.put(signature.key, CacheEntry(outputs, ui))
        if ui:
            self.result.ui_outputs[node_id] = ui
            self.emit(Executed(node_id, ui, self.prompt_id))


def execute(
    prompt: dict[str, Any] | Graph,
    registry: NodeRegistry,
    *,
    cache: OutputCache,
    events: EventSink | None = None,
    cancel: CancelToken | None = None,
    prompt_id: str = "",
    extra: dict[str, Any] | None = None,
    targets: Iterable[str] | None = None,
) -> ExecutionResult:
    """Validate and run an API-format prompt.

    Raises WorkflowValidationError (nothing ran, no events), NodeExecutionError (after an
    ExecutionError event) or WorkflowCancelled, a sd35.errors.Cancelled (after ExecutionInterrupted).
    Every run that started ends with Executing(node=None). Outputs of nodes that finished stay cached
    even when the run fails. `targets` restricts which output nodes run."""
    validation = validate(prompt, registry, targets=targets)
    validation.raise_if_invalid()
    graph = validation.graph
    order = graph.execution_order(validation.outputs)
    signatures = node_signatures(graph, order, registry)
    run = _Run(graph, registry, cache, events, cancel or CancelToken(), prompt_id, dict(extra or {}))
    run.result.output_nodes = list(validation.outputs)
    run.result.node_errors = validation.node_errors
    try:
        return run.run(order, signatures)
    except Cancelled as exc:
        node_id = next((n for n in order if n not in run.result.outputs), None)
        class_type = graph[node_id].class_type if node_id is not None else None
        executed = list(run.result.executed)
        run.emit(ExecutionInterrupted(node_id, class_type, tuple(executed), prompt_id))
        raise WorkflowCancelled(node_id, class_type, executed) from exc
    finally:
        cache.retain(s.key for s in signatures.values())
        run.emit(Executing(None, prompt_id))
