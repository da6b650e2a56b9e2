"""Node outputs kept across runs, keyed by input signature (ComfyUI CacheKeySetInputSignature).

A node's signature hashes its class_type, its fingerprint (IS_CHANGED), its literal inputs and, for
each linked input, the upstream node's signature and slot. Equal signature => same outputs, so
changing a prompt's text re-runs that text encoder and what follows, never the loaders."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
import uuid
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .graph import Graph, Link
from .registry import NodeRegistry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CacheEntry:
    """One node's result: its output tuple and, for output nodes, the UI dict it reported."""

    outputs: tuple[Any, ...]
    ui: dict[str, Any] | None = None


@dataclass(frozen=True)
class Signature:
    """`cacheable` is False when the node (or an ancestor) asked to always re-run."""

    key: str
    cacheable: bool = True


class OutputCache:
    """Outputs by signature, shared by successive `execute` calls (thread-safe).

    max_entries=None: ComfyUI's classic policy, after each run only the entries the last prompt
    used are kept (so a model dropped from the graph is freed). max_entries=0: nothing is cached
    (--cache-none). max_entries=N: the N most recently used entries are kept (--cache-lru N)."""

    def __init__(self, max_entries: int | None = None) -> None:
        if max_entries is not None and max_entries < 0:
            raise ValueError("max_entries must be None or >= 0")
        self.max_entries = max_entries
        self._entries: OrderedDict[str, CacheEntry] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> CacheEntry | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
            return entry

    def put(self, key: str, entry: CacheEntry) -> None:
        if self.max_entries == 0:
            return
        with self._lock:
            self._entries[key] = entry
            self._entries.move_to_end(key)
            while self.max_entries is not None and len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def retain(self, keys: Iterable[str]) -> None:
        """End of a run: under the classic policy, drop every entry not in `keys`."""
        if self.max_entries is not None:
            return
        wanted = set(keys)
        with self._lock:
            for key in [k for k in self._entries if k not in wanted]:
                del self._entries[key]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._entries

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=repr)


def _fingerprint(graph: Graph, node_id: str, registry: NodeRegistry) -> tuple[Any, bool]:
    """(fingerprint value, cacheable). NaN or an exception means "always re-run", as in ComfyUI."""
    node = graph[node_id]
    spec = registry.get(node.class_type)
    if spec.fingerprint is None:
        return None, True
    literals = {
        i.name: node.inputs[i.name]
        for i in spec.inputs
        if i.name in node.inputs and not isinstance(node.inputs[i.name], Link)
    }
    try:
        value = spec.fingerprint(**literals)
    except Exception as ex:  # a broken fingerprint must not stop the run; just never cache
        log.warning("fingerprint of node %s (%s) failed, it will re-run: %s", node_id, node.class_type, ex)
        return None, False
    if isinstance(value, float) and math.isnan(value):
        return None, False
    return value, True


def node_signatures(graph: Graph, order: list[str], registry: NodeRegistry) -> dict[str, Signature]:
    """Signature of every node in `order` (dependencies first)."""
    signatures: dict[str, Signature] = {}
    for node_id in order:
        node = graph[node_id]
        spec = registry.get(node.class_type)
        fingerprint, cacheable = _fingerprint(graph, node_id, registry)
        inputs: dict[str, Any] = {}
        for input_spec in spec.inputs:
            if input_spec.name not in node.inputs:
                continue
            value = node.inputs[input_spec.name]
            if isinstance(value, Link):
                upstream = signatures[value.node_id]
                cacheable = cacheable and upstream.cacheable
                value = ["__link__", upstream.key, value.slot]
            inputs[input_spec.name] = value
        parts: list[Any] = [node.class_type, _canonical(fingerprint), inputs]
        if spec.not_idempotent:
            parts.append(["__node__", node_id])
        if not cacheable:
            parts.append(["__run__", uuid.uuid4().hex])
        key = hashlib.sha256(_canonical(parts).encode()).hexdigest()
        signatures[node_id] = Signature(key, cacheable)
    return signatures
