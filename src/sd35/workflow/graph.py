"""The API-format prompt as a graph: {"id": {"class_type", "inputs": {name: value | [src_id, slot]}}}.

Node ids are strings; a link is a 2-list [source node id, output slot] (ComfyUI `is_link`). Traversals
are iterative, so deep chains do not hit Python's recursion limit."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .errors import WorkflowValidationError


@dataclass(frozen=True)
class Link:
    """A connection to output `slot` of node `node_id`."""

    node_id: str
    slot: int

    def to_json(self) -> list[Any]:
        return [self.node_id, self.slot]


def as_link(value: Any) -> Link | None:
    """[node_id, slot] -> Link; an int node id is accepted and turned into a string. Else None."""
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        return None
    node_id, slot = value
    if isinstance(node_id, bool) or not isinstance(node_id, (str, int)):
        return None
    if isinstance(slot, bool) or not isinstance(slot, int):
        return None
    return Link(str(node_id), slot)


@dataclass
class GraphNode:
    """One node: inputs hold Link objects, literals, or (malformed) raw lists for validation to report."""

    id: str
    class_type: str
    inputs: dict[str, Any] = field(default_factory=dict)
    title: str | None = None

    def links(self) -> Iterator[tuple[str, Link]]:
        for name, value in self.inputs.items():
            if isinstance(value, Link):
                yield name, value

    def to_api(self) -> dict[str, Any]:
        inputs = {k: (v.to_json() if isinstance(v, Link) else v) for k, v in self.inputs.items()}
        node: dict[str, Any] = {"inputs": inputs, "class_type": self.class_type}
        if self.title is not None:
            node["_meta"] = {"title": self.title}
        return node


class CycleError(ValueError):
    """A dependency cycle; `cycle` lists the node ids along it, first id repeated at the end."""

    def __init__(self, cycle: list[str]) -> None:
        self.cycle = cycle
        super().__init__("dependency cycle: " + " -> ".join(cycle))


class Graph:
    """Nodes by id plus the traversals the validator and executor need."""

    def __init__(self, nodes: dict[str, GraphNode]) -> None:
        self.nodes = nodes

    def __contains__(self, node_id: object) -> bool:
        return node_id in self.nodes

    def __getitem__(self, node_id: str) -> GraphNode:
        return self.nodes[node_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self.nodes)

    def __len__(self) -> int:
        return len(self.nodes)

    def upstream(self, node_id: str) -> list[str]:
        """Ids of existing nodes feeding `node_id`, in input order, without repeats."""
        seen: dict[str, None] = {}
        for _, link in self.nodes[node_id].links():
            if link.node_id in self.nodes:
                seen.setdefault(link.node_id)
        return list(seen)

    def ancestors(self, roots: Iterable[str]) -> set[str]:
        """`roots` plus every node they depend on (cycle-safe)."""
        found: set[str] = set()
        todo = [r for r in roots if r in self.nodes]
        while todo:
            node_id = todo.pop()
            if node_id not in found:
                found.add(node_id)
                todo.extend(self.upstream(node_id))
        return found

    def _walk(self, roots: Iterable[str], on_cycle: Any) -> list[str]:
        """Depth-first post-order from `roots` (dependencies first); back edges go to `on_cycle(path)`."""
        order: list[str] = []
        state: dict[str, int] = {}  # 1 = on the stack, 2 = finished
        for root in roots:
            if root not in self.nodes or root in state:
                continue
            state[root] = 1
            stack = [(root, iter(self.upstream(root)))]
            while stack:
                node_id, pending = stack[-1]
                for up in pending:
                    if up not in state:
                        state[up] = 1
                        stack.append((up, iter(self.upstream(up))))
                        break
                    if state[up] == 1:
                        path = [n for n, _ in stack]
                        on_cycle(path[path.index(up) :] + [up])
                else:
                    stack.pop()
                    state[node_id] = 2
                    order.append(node_id)
        return order

    def find_cycles(self, roots: Iterable[str]) -> list[list[str]]:
        """Every distinct cycle reachable from `roots`, each as a closed path [a, b, ..., a]."""
        cycles: list[list[str]] = []
        seen: set[frozenset[str]] = set()

        def record(path: list[str]) -> None:
            key = frozenset(path)
            if key not in seen:
                seen.add(key)
                cycles.append(path)

        self._walk(roots, record)
        return cycles

    def execution_order(self, roots: Iterable[str]) -> list[str]:
        """Every node `roots` need, each after all its inputs; CycleError if there is none."""

        def fail(path: list[str]) -> None:
            raise CycleError(path)

        return self._walk(roots, fail)

    def to_api(self) -> dict[str, Any]:
        return {node_id: node.to_api() for node_id, node in self.nodes.items()}


def _invalid(message: str, details: str = "", node_errors: dict[str, Any] | None = None) -> dict[str, Any]:
    error = {"type": "invalid_prompt", "message": message, "details": details, "extra_info": {}}
    return {"error": error, "node_errors": node_errors or {}}


def _node_problem(node_id: str, value: Any) -> tuple[str, str] | None:
    """(error type, message) if the node entry itself is malformed."""
    if not isinstance(value, dict):
        return "invalid_node", f"node {node_id} must be an object with class_type and inputs"
    if not isinstance(value.get("class_type"), str) or not value["class_type"]:
        return "missing_node_type", f"node {node_id} has no class_type; the workflow may be corrupted"
    if not isinstance(value.get("inputs", {}), dict):
        return "invalid_node", f"inputs of node {node_id} must be an object mapping input names to values"
    return None


def parse_api_prompt_collecting(data: Any) -> tuple[Graph, dict[str, Any] | None]:
    """Parse what can be parsed; the second item is a ComfyUI-shaped error body or None."""
    if not isinstance(data, dict):
        kind = type(data).__name__
        return Graph({}), _invalid("Invalid prompt: expected a JSON object of nodes", f"got {kind}")
    nodes: dict[str, GraphNode] = {}
    node_errors: dict[str, Any] = {}
    for raw_id, value in data.items():
        node_id = str(raw_id)
        problem = _node_problem(node_id, value)
        if problem is not None:
            kind, message = problem
            class_type = value.get("class_type") if isinstance(value, dict) else None
            error = {"type": kind, "message": message, "details": f"Node ID '#{node_id}'", "extra_info": {}}
            node_errors[node_id] = {"errors": [error], "dependent_outputs": [], "class_type": class_type}
            continue
        inputs = {name: (as_link(v) or v) for name, v in value.get("inputs", {}).items()}
        meta = value.get("_meta")
        title = meta.get("title") if isinstance(meta, dict) else None
        nodes[node_id] = GraphNode(node_id, value["class_type"], inputs, title)
    if node_errors:
        first = next(iter(node_errors.values()))["errors"][0]
        return Graph(nodes), _invalid(f"Invalid prompt: {first['message']}", first["details"], node_errors)
    return Graph(nodes), None


def parse_api_prompt(data: Any) -> Graph:
    """API-format prompt -> Graph; WorkflowValidationError (invalid_prompt) if its shape is wrong."""
    graph, error = parse_api_prompt_collecting(data)
    if error is not None:
        raise WorkflowValidationError(error)
    return graph


def node_sort_key(node_id: str) -> tuple[int, int, str]:
    """Numeric ids in numeric order, then the rest alphabetically ("2" < "10" < "a")."""
    return (0, int(node_id), "") if node_id.isdigit() else (1, 0, node_id)
