"""Errors the workflow engine raises; each carries what a front end needs to report it (stdlib only)."""

from __future__ import annotations

from typing import Any

from sd35.errors import Cancelled, SD35Error


class WorkflowValidationError(SD35Error):
    """A prompt or workflow that cannot run. `response` is ComfyUI's POST /prompt 400 body:
    {"error": {type, message, details, extra_info}, "node_errors": {node_id: {...}}}."""

    def __init__(self, response: dict[str, Any]) -> None:
        self.response = response
        super().__init__(format_validation_errors(response))

    @property
    def error(self) -> dict[str, Any]:
        return self.response["error"]

    @property
    def node_errors(self) -> dict[str, Any]:
        return self.response.get("node_errors", {})


class NodeExecutionError(SD35Error):
    """A node function raised. The message names the node; `__cause__` holds the original exception."""

    def __init__(self, node_id: str, class_type: str, message: str, exception_type: str = "") -> None:
        self.node_id = node_id
        self.class_type = class_type
        self.exception_type = exception_type
        self.detail = message
        super().__init__(f"node {node_id} ({class_type}) failed: {message}")


class WorkflowCancelled(Cancelled):
    """Execution was interrupted; `node_id` is the node that was running or about to run."""

    def __init__(self, node_id: str | None, class_type: str | None, executed: list[str]) -> None:
        self.node_id = node_id
        self.class_type = class_type
        self.executed = executed
        where = f" at node {node_id} ({class_type})" if node_id else ""
        super().__init__(f"execution interrupted{where}")


def format_validation_errors(response: dict[str, Any]) -> str:
    """One readable paragraph for a ComfyUI-shaped validation body: the top error, then one line per
    node error ("node 294 (KSampler): Value not in list: sampler_name: 'x' not in [...]")."""
    error = response.get("error") or {}
    lines = [str(error.get("message", "invalid workflow"))]
    for node_id, entry in (response.get("node_errors") or {}).items():
        for item in entry.get("errors", []):
            details = f": {item['details']}" if item.get("details") else ""
            lines.append(f"  node {node_id} ({entry.get('class_type')}): {item.get('message')}{details}")
    if len(lines) == 1 and error.get("details"):
        lines.append(f"  {error['details']}")
    return "\n".join(lines)
