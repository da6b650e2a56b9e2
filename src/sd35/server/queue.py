"""PromptQueue: the one queue and the one worker thread that runs prompts with the workflow engine,
recording each finished prompt (success, error or interrupted) in the history store.

Behaviour follows ComfyUI `execution.py` PromptQueue / `main.py` prompt_worker: pending prompts run in
order of their number (`front` submissions get negative numbers); the worker records history *before*
it sends `executing {node: null}` and the `status` broadcast, so a client that reacts to either finds
the prompt in /history. A prompt that fails is recorded with its error and the worker goes on."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sd35.workflow import (
    CancelToken,
    Event,
    Executed,
    Executing,
    NodeExecutionError,
    NodeRegistry,
    OutputCache,
    WorkflowCancelled,
    WorkflowValidationError,
    execute,
)
from sd35.workflow.events import now_ms

from .history import HistoryStore, history_entry

log = logging.getLogger(__name__)

# (message {"type", "data"}, client id or None = every client) -> None; must be thread-safe.
Publish = Callable[[dict[str, Any], "str | None"], None]
RECORDED_MESSAGES = {"execution_start", "execution_cached", "execution_success", "execution_error"}
RECORDED_MESSAGES |= {"execution_interrupted"}


def _drop(message: dict[str, Any], sid: str | None) -> None:
    return None


@dataclass
class QueueItem:
    """One queued prompt; `as_list()` is ComfyUI's 5-tuple [number, id, prompt, extra_data, outputs]."""

    number: int | float
    prompt_id: str
    prompt: dict[str, Any]
    extra_data: dict[str, Any] = field(default_factory=dict)
    outputs: list[str] = field(default_factory=list)

    @property
    def client_id(self) -> str | None:
        value = self.extra_data.get("client_id")
        return value if isinstance(value, str) else None

    def as_list(self) -> list[Any]:
        return [self.number, self.prompt_id, self.prompt, self.extra_data, list(self.outputs)]


class _RunRecorder:
    """Event sink for one run: forwards events to the submitting client and keeps what history needs.
    The final Executing(None) is held back until history has been written."""

    def __init__(self, item: QueueItem, publish: Publish) -> None:
        self.item, self.publish = item, publish
        self.messages: list[list[Any]] = []
        self.outputs: dict[str, Any] = {}
        self.done_message: dict[str, Any] | None = None

    def __call__(self, event: Event) -> None:
        message = event.to_comfy_message()
        if isinstance(event, Executing) and event.node is None:
            self.done_message = message
            return
        if isinstance(event, Executed):
            self.outputs[event.node] = event.output
        if message["type"] in RECORDED_MESSAGES:
            self.messages.append([message["type"], message["data"]])
        self.publish(message, self.item.client_id)

    def error(self, exc: BaseException, node_id: str | None = None, class_type: str | None = None) -> None:
        """Record and send an execution_error for a failure the executor did not report itself."""
        data = {
            "prompt_id": self.item.prompt_id,
            "node_id": node_id,
            "node_type": class_type,
            "executed": [],
            "exception_message": str(exc),
            "exception_type": type(exc).__name__,
            "traceback": [],
            "current_inputs": {},
            "current_outputs": [],
            "timestamp": now_ms(),
        }
        self.messages.append(["execution_error", data])
        self.publish({"type": "execution_error", "data": data}, self.item.client_id)


class PromptQueue:
    """Pending prompts, the running one, and the worker thread that executes them."""

    def __init__(
        self,
        registry: NodeRegistry,
        *,
        history: HistoryStore | None = None,
        cache: OutputCache | None = None,
        publish: Publish | None = None,
        unload_models: Callable[[], None] | None = None,
    ) -> None:
        self.registry = registry
        self.unload_models = unload_models
        self.history = history if history is not None else HistoryStore()
        self.cache = cache if cache is not None else OutputCache()
        self.publish: Publish = publish or _drop
        self._cond = threading.Condition()
        self._pending: list[QueueItem] = []
        self._running: QueueItem | None = None
        self._token: CancelToken | None = None
        self._counter = 0
        self._stopping = False
        self._free_pending: tuple[bool, bool] | None = None  # (clear cache, unload models)
        self._thread: threading.Thread | None = None

    # ---- submission side (any thread) ----
    def next_number(self) -> int:
        """ComfyUI's prompt counter: increases on every POST /prompt, valid or not."""
        with self._cond:
            number = self._counter
            self._counter += 1
            return number

    def put(self, item: QueueItem) -> None:
        with self._cond:
            if self.contains(item.prompt_id):
                raise ValueError(f"prompt_id {item.prompt_id!r} is already queued")
            self._pending.append(item)
            self._pending.sort(key=lambda i: i.number)
            self._cond.notify_all()
        self.publish_status()

    def contains(self, prompt_id: str) -> bool:
        with self._cond:
            running = self._running is not None and self._running.prompt_id == prompt_id
            return running or any(i.prompt_id == prompt_id for i in self._pending)

    def snapshot(self) -> tuple[list[QueueItem], list[QueueItem]]:
        """(running, pending) lists (ComfyUI get_current_queue)."""
        with self._cond:
            return ([self._running] if self._running else []), list(self._pending)

    def remaining(self) -> int:
        """queue_remaining: pending plus running (ComfyUI get_tasks_remaining)."""
        with self._cond:
            return len(self._pending) + (1 if self._running else 0)

    def delete(self, prompt_ids: list[str]) -> list[str]:
        """Remove pending prompts (a running one is not touched: use interrupt). Returns the removed ids."""
        wanted = set(prompt_ids)
        with self._cond:
            removed = [i.prompt_id for i in self._pending if i.prompt_id in wanted]
            self._pending = [i for i in self._pending if i.prompt_id not in wanted]
        if removed:
            self.publish_status()
        return removed

    def clear(self) -> list[str]:
        """Remove every pending prompt; returns the removed ids."""
        with self._cond:
            removed = [i.prompt_id for i in self._pending]
            self._pending = []
        self.publish_status()
        return removed

    def interrupt(self, prompt_id: str | None = None) -> bool:
        """Stop the running prompt (only if it is `prompt_id`, when given). True if one was signalled."""
        with self._cond:
            if self._running is None or self._token is None:
                return False
            if prompt_id and self._running.prompt_id != prompt_id:
                return False
            self._token.cancel()
            return True

    def request_free(self, *, unload_models: bool) -> None:
        """POST /free: drop cached node outputs (and unload models); done now when idle, else after the
        running prompt (only the worker touches the cache while it runs)."""
        with self._cond:
            if self._running is None:
                self._free(unload_models)
            else:
                self._free_pending = (True, unload_models)

    def _free(self, unload_models: bool) -> None:
        self.cache.clear()
        if unload_models and self.unload_models is not None:
            try:
                self.unload_models()
            except Exception:
                log.exception("unloading models failed")

    def status_message(self, sid: str | None = None) -> dict[str, Any]:
        data: dict[str, Any] = {"status": {"exec_info": {"queue_remaining": self.remaining()}}}
        if sid is not None:
            data["sid"] = sid
        return {"type": "status", "data": data}

    def publish_status(self) -> None:
        self.publish(self.status_message(), None)

    # ---- worker side ----
    def start(self) -> None:
        with self._cond:
            if self._thread is not None:
                return
            self._stopping = False
            self._thread = threading.Thread(target=self._work, name="sd35-prompt-worker", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Interrupt the running prompt, stop the worker and wait for it."""
        with self._cond:
            self._stopping = True
            if self._token is not None:
                self._token.cancel()
            self._cond.notify_all()
            thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until nothing is pending or running; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._pending and self._running is None, timeout)

    def _take(self) -> QueueItem | None:
        with self._cond:
            self._cond.wait_for(lambda: self._pending or self._stopping)
            if self._stopping:
                return None
            item = self._pending.pop(0)
            self._running, self._token = item, CancelToken()
            return item

    def _work(self) -> None:
        while True:
            item = self._take()
            if item is None:
                return
            self.publish_status()
            try:
                self.run_item(item, self._token or CancelToken())
            except Exception:  # never let the worker die: the queue must go on
                log.exception("prompt %s: unexpected failure in the worker", item.prompt_id)
            with self._cond:
                self._running, self._token = None, None
                if self._free_pending is not None:
                    self._free(self._free_pending[1])
                    self._free_pending = None
                self._cond.notify_all()
            self.publish_status()

    def run_item(self, item: QueueItem, token: CancelToken) -> str:
        """Execute one prompt and record it in history; returns "success" or "error"."""
        recorder = _RunRecorder(item, self.publish)
        status = "error"
        try:
            execute(
                item.prompt,
                self.registry,
                cache=self.cache,
                events=recorder,
                cancel=token,
                prompt_id=item.prompt_id,
                extra=item.extra_data,
                targets=item.outputs or None,
            )
            status = "success"
        except WorkflowCancelled:
            log.info("prompt %s interrupted", item.prompt_id)
        except NodeExecutionError as exc:
            log.info("prompt %s failed: %s", item.prompt_id, exc)
        except WorkflowValidationError as exc:  # e.g. a model file removed after the prompt was queued
            recorder.error(exc)
        except Exception as exc:
            log.exception("prompt %s: engine failure", item.prompt_id)
            recorder.error(exc)
        self.history.add(item.prompt_id, history_entry(item.as_list(), recorder.outputs, recorder.messages, status))
        done = recorder.done_message or Executing(None, item.prompt_id).to_comfy_message()
        self.publish(done, item.client_id)
        return status
