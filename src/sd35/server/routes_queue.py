"""Routes that submit and manage prompts: /prompt, /queue, /interrupt, /history, /free
(ComfyUI `server.py`; comfyui.md §6)."""

from __future__ import annotations

import logging
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from sd35.workflow import validate

from .bodies import openapi_body, read_json
from .queue import QueueItem
from .state import ServerState, get_state

log = logging.getLogger(__name__)
router = APIRouter()
State = Annotated[ServerState, Depends(get_state)]


class PromptRequest(BaseModel):
    """POST /prompt body (ComfyUI's keys; unknown keys are ignored)."""

    model_config = ConfigDict(extra="ignore")
    prompt: dict[str, Any] = Field(description="API-format prompt: {node_id: {class_type, inputs}}")
    client_id: str | None = Field(None, max_length=256, description="WebSocket clientId that receives the events")
    extra_data: dict[str, Any] | None = Field(None, description='e.g. {"extra_pnginfo": {"workflow": ...}}')
    prompt_id: str | None = Field(None, min_length=1, max_length=256)
    number: float | None = Field(None, allow_inf_nan=False, ge=-1e15, le=1e15)
    front: bool | None = None
    partial_execution_targets: list[str] | None = None


class PromptAnswer(BaseModel):
    prompt_id: str
    number: int | float
    node_errors: dict[str, Any]


class QueueRequest(BaseModel):
    clear: bool = False
    delete: list[str] = Field(default_factory=list)


class InterruptRequest(BaseModel):
    prompt_id: str | None = None


class FreeRequest(BaseModel):
    unload_models: bool = False
    free_memory: bool = False


def _prompt_error(message: str, details: str = "") -> JSONResponse:
    error = {"type": "invalid_prompt", "message": message, "details": details, "extra_info": {}}
    return JSONResponse({"error": error, "node_errors": {}}, status_code=400)


@router.post(
    "/prompt",
    response_model=PromptAnswer,
    responses={400: {"description": "validation errors"}},
    openapi_extra=openapi_body(PromptRequest),
)
async def post_prompt(request: Request, state: State) -> Any:
    """Validate and queue a prompt; 400 with ComfyUI's {error, node_errors} if no output can run."""
    body = await read_json(request, PromptRequest)
    assert body is not None
    return await run_in_threadpool(_queue_prompt, body, state)


def _queue_prompt(body: PromptRequest, state: ServerState) -> Any:
    number: float | int = state.queue.next_number()
    if body.number is not None:
        number = int(body.number) if float(body.number).is_integer() else body.number
    if body.front:
        number = -number
    prompt_id = body.prompt_id or str(uuid.uuid4())
    if state.queue.contains(prompt_id):
        return _prompt_error("Prompt id already queued", prompt_id)
    try:
        result = validate(body.prompt, state.registry, targets=body.partial_execution_targets)
    except (RecursionError, ValueError, TypeError) as exc:
        log.warning("prompt validation raised %s", type(exc).__name__)
        return _prompt_error("Invalid prompt", type(exc).__name__)
    if not result.ok:
        return JSONResponse(result.to_response(), status_code=400)
    extra = dict(body.extra_data or {})
    if body.client_id is not None:
        extra["client_id"] = body.client_id
    try:
        state.queue.put(QueueItem(number, prompt_id, body.prompt, extra, list(result.outputs)))
    except ValueError as exc:
        return _prompt_error("Prompt id already queued", str(exc))
    return {"prompt_id": prompt_id, "number": number, "node_errors": result.node_errors}


@router.get("/prompt")
def get_prompt(state: State) -> dict[str, Any]:
    """{"exec_info": {"queue_remaining": N}}."""
    return {"exec_info": {"queue_remaining": state.queue.remaining()}}


@router.get("/queue")
def get_queue(state: State) -> dict[str, Any]:
    """Running and pending prompts as ComfyUI 5-tuples [number, prompt_id, prompt, extra_data, outputs]."""
    running, pending = state.queue.snapshot()
    return {"queue_running": [i.as_list() for i in running], "queue_pending": [i.as_list() for i in pending]}


@router.post("/queue", openapi_extra=openapi_body(QueueRequest))
async def post_queue(request: Request, state: State) -> dict[str, Any]:
    """{"clear": true} removes every pending prompt, {"delete": [ids]} some; answers the removed ids."""
    body = await read_json(request, QueueRequest, optional=True) or QueueRequest()
    deleted: list[str] = []
    if body.clear:
        deleted += state.queue.clear()
    if body.delete:
        deleted += state.queue.delete(body.delete)
    return {"deleted": deleted}


@router.post("/interrupt", openapi_extra=openapi_body(InterruptRequest, required=False))
async def post_interrupt(request: Request, state: State) -> dict[str, Any]:
    """Stop the running prompt (only if it is `prompt_id`, when given)."""
    body = await read_json(request, InterruptRequest, optional=True)
    prompt_id = body.prompt_id if body is not None else None
    return {"interrupted": state.queue.interrupt(prompt_id)}


@router.get("/history")
def get_history(
    state: State,
    max_items: Annotated[int | None, Query(ge=0, le=1_000_000)] = None,
    offset: Annotated[int, Query(ge=-1, le=1_000_000_000)] = -1,
) -> dict[str, Any]:
    """Finished prompts, oldest first; with max_items and no offset, the newest max_items."""
    return state.queue.history.list(max_items, offset)


@router.get("/history/{prompt_id}")
def get_history_item(prompt_id: str, state: State) -> dict[str, Any]:
    """{prompt_id: entry}, or {} if it is unknown or not finished yet."""
    return state.queue.history.get(prompt_id)


@router.post("/history", openapi_extra=openapi_body(QueueRequest))
async def post_history(request: Request, state: State) -> dict[str, Any]:
    """{"clear": true} or {"delete": [ids]}."""
    body = await read_json(request, QueueRequest, optional=True) or QueueRequest()
    if body.clear:
        state.queue.history.clear()
    if body.delete:
        state.queue.history.delete(body.delete)
    return {}


@router.post("/free", openapi_extra=openapi_body(FreeRequest, required=False))
async def post_free(request: Request, state: State) -> dict[str, Any]:
    """Forget cached node outputs (and unload models when the services can)."""
    body = await read_json(request, FreeRequest, optional=True)
    if body is not None and (body.unload_models or body.free_memory):
        state.queue.request_free(unload_models=body.unload_models)
    return {}
