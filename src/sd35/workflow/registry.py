"""NodeRegistry: the node types one engine instance knows. An object you build and pass around,
never a module-level table (ComfyUI's NODE_CLASS_MAPPINGS is the anti-pattern)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from .objectinfo import node_object_info
from .spec import NodeSpec


class NodeRegistry:
    """class_type -> NodeSpec, in registration order."""

    def __init__(self, specs: Iterable[NodeSpec] = ()) -> None:
        self._specs: dict[str, NodeSpec] = {}
        for spec in specs:
            self.register(spec)

    def register(self, spec: NodeSpec) -> NodeSpec:
        """Add a node type; a second spec with the same class_type is an error."""
        if spec.class_type in self._specs:
            raise ValueError(f"node type {spec.class_type!r} is already registered")
        self._specs[spec.class_type] = spec
        return spec

    def get(self, class_type: str) -> NodeSpec:
        """The spec for `class_type`; KeyError naming the type if it is unknown."""
        try:
            return self._specs[class_type]
        except KeyError:
            raise KeyError(f"unknown node type {class_type!r}") from None

    def find(self, class_type: Any) -> NodeSpec | None:
        """The spec or None (also None for a non-string class_type)."""
        return self._specs.get(class_type) if isinstance(class_type, str) else None

    def __contains__(self, class_type: object) -> bool:
        return isinstance(class_type, str) and class_type in self._specs

    def __iter__(self) -> Iterator[NodeSpec]:
        return iter(self._specs.values())

    def __len__(self) -> int:
        return len(self._specs)

    def class_types(self) -> list[str]:
        return list(self._specs)

    def object_info_for(self, class_type: str) -> dict[str, Any]:
        """GET /object_info/{class_type} body entry; COMBO lists are resolved now."""
        return node_object_info(self.get(class_type))

    def object_info(self) -> dict[str, Any]:
        """GET /object_info body: {class_type: entry} for every registered node."""
        return {name: node_object_info(spec) for name, spec in self._specs.items()}
