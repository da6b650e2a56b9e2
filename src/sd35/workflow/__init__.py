"""ComfyUI-compatible workflow engine that knows no models (stdlib only; never imports torch).

Read a prompt (API or UI format), validate it against a NodeRegistry, execute what the output nodes
need with an OutputCache, and report events. See docs/workflow-engine.md."""

from .cache import CacheEntry, OutputCache
from .errors import NodeExecutionError, WorkflowCancelled, WorkflowValidationError, format_validation_errors
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
    Progress,
)
from .executor import ExecutionResult, execute
from .graph import Graph, GraphNode, Link, parse_api_prompt
from .objectinfo import node_object_info, spec_from_object_info
from .registry import NodeRegistry
from .spec import InputSpec, NodeSpec, OutputSpec
from .uiformat import is_ui_format, load_prompt, load_prompt_text, ui_to_api
from .validate import ValidationResult, validate

__all__ = [
    "CacheEntry",
    "CancelToken",
    "Event",
    "EventSink",
    "Executed",
    "Executing",
    "ExecutionCached",
    "ExecutionError",
    "ExecutionInterrupted",
    "ExecutionResult",
    "ExecutionStart",
    "ExecutionSuccess",
    "Graph",
    "GraphNode",
    "InputSpec",
    "Link",
    "NodeContext",
    "NodeExecutionError",
    "NodeRegistry",
    "NodeSpec",
    "OutputCache",
    "OutputSpec",
    "Progress",
    "ValidationResult",
    "WorkflowCancelled",
    "WorkflowValidationError",
    "execute",
    "format_validation_errors",
    "is_ui_format",
    "load_prompt",
    "load_prompt_text",
    "node_object_info",
    "parse_api_prompt",
    "spec_from_object_info",
    "ui_to_api",
    "validate",
]
