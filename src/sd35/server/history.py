"""The history store behind GET/POST /history: finished prompts, oldest first, bounded in size.

Entry shape (ComfyUI `execution.py` PromptQueue.task_done; sample in comfyui_api_samples/history_one_prompt.json):
{"prompt": [number, prompt_id, prompt, extra_data, outputs_to_execute], "outputs": {node: ui},
 "status": {"status_str": "success"|"error", "completed": bool, "messages": [[type, data], ...]},
 "meta": {node: {"node_id", "display_node", "parent_node", "real_node_id"}}}"""

from __future__ import annotations

import copy
import threading
from collections import OrderedDict
from typing import Any

MAX_HISTORY_ITEMS = 10000  # ComfyUI MAXIMUM_HISTORY_SIZE


class HistoryStore:
    """Thread-safe, insertion-ordered prompt_id -> entry; the oldest entries are dropped past `max_items`."""

    def __init__(self, max_items: int = MAX_HISTORY_ITEMS) -> None:
        self._items: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._lock = threading.Lock()
        self.max_items = max_items

    def add(self, prompt_id: str, entry: dict[str, Any]) -> None:
        with self._lock:
            self._items.pop(prompt_id, None)
            self._items[prompt_id] = entry
            while len(self._items) > self.max_items:
                self._items.popitem(last=False)

    def get(self, prompt_id: str) -> dict[str, Any]:
        """{prompt_id: entry} or {} (GET /history/{id})."""
        with self._lock:
            entry = self._items.get(prompt_id)
            return {prompt_id: copy.deepcopy(entry)} if entry is not None else {}

    def __contains__(self, prompt_id: object) -> bool:
        with self._lock:
            return prompt_id in self._items

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def ids(self) -> list[str]:
        with self._lock:
            return list(self._items)

    def list(self, max_items: int | None = None, offset: int = -1) -> dict[str, Any]:
        """GET /history: ComfyUI's paging (a negative offset with max_items gives the newest max_items)."""
        with self._lock:
            keys = list(self._items)
            if offset < 0 and max_items is not None:
                offset = len(keys) - max_items
            offset = max(offset, 0)
            selected = keys[offset:] if max_items is None else keys[offset : offset + max(max_items, 0)]
            return {k: copy.deepcopy(self._items[k]) for k in selected}

    def delete(self, prompt_ids: list[str]) -> None:
        with self._lock:
            for prompt_id in prompt_ids:
                self._items.pop(prompt_id, None)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


def history_entry(
    queue_tuple: list[Any],
    outputs: dict[str, Any],
    messages: list[list[Any]],
    status_str: str,
) -> dict[str, Any]:
    """One history entry; `meta` has one record per node that produced UI output."""
    meta = {
        node_id: {"node_id": node_id, "display_node": node_id, "parent_node": None, "real_node_id": node_id}
        for node_id in outputs
    }
    return {
        "prompt": queue_tuple,
        "outputs": outputs,
        "status": {"status_str": status_str, "completed": status_str == "success", "messages": messages},
        "meta": meta,
    }
