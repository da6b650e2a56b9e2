"""The web page (GET / and /static/*) and the small sd35-only endpoints it uses: token counts while the
user types, reading a dropped workflow/PNG, and the gallery of finished prompts with their settings."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, Field

from sd35.errors import SD35Error
from sd35.text.prompt import T5_ADVISED_MAX_TOKENS, tokenize_prompt
from sd35.text.tokenizers import load_tokenizers

from .bodies import openapi_body, read_json
from .params import params_from_prompt, workflow_from_upload
from .security import error_body
from .state import ServerState, get_state

router = APIRouter()
State = Annotated[ServerState, Depends(get_state)]
STATIC_DIR = Path(__file__).resolve().parent / "static"
MAX_WORKFLOW_BYTES = 32 * 1024 * 1024


class TokensRequest(BaseModel):
    text: str = Field("", max_length=100_000)


class TokensAnswer(BaseModel):
    t5xxl: int
    clip_l: int
    clip_g: int
    t5_limit: int
    over_limit: bool
    warnings: list[str]


@router.get("/", include_in_schema=False)
def index() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers={"Cache-Control": "no-cache"})


@router.post("/sd35/tokens", response_model=TokensAnswer, openapi_extra=openapi_body(TokensRequest))
async def tokens(request: Request) -> Any:
    """Token counts of a prompt for T5-XXL, CLIP-L and CLIP-G (tokenizers only, no model), with the
    warning SD3.5 gives past 256 T5 tokens."""
    body = await read_json(request, TokensRequest)
    assert body is not None
    return await run_in_threadpool(_count_tokens, body.text)


def _count_tokens(text: str) -> Any:
    try:
        counted = tokenize_prompt(load_tokenizers(), text)
    except SD35Error as exc:
        return JSONResponse(error_body("bad_request", str(exc)), status_code=400)
    return {
        "t5xxl": counted.t5.count,
        "clip_l": counted.clip_l.count,
        "clip_g": counted.clip_g.count,
        "t5_limit": T5_ADVISED_MAX_TOKENS,
        "over_limit": counted.t5.count > T5_ADVISED_MAX_TOKENS,
        "warnings": list(counted.warnings),
    }


@router.post(
    "/sd35/workflow",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
        }
    },
    responses={400: {"description": "not a workflow"}},
)
async def read_workflow(request: Request, state: State) -> Any:
    """A dropped file (workflow JSON in API or UI format, or a PNG written by ComfyUI or sd35) as
    {"prompt": API prompt, "params": page settings, "source"}."""
    data = await request.body()
    if len(data) > MAX_WORKFLOW_BYTES:
        return JSONResponse(error_body("too_large", "workflow file is too large"), status_code=413)
    try:
        return workflow_from_upload(data, state.registry)
    except SD35Error as exc:
        return JSONResponse(error_body("bad_workflow", str(exc)), status_code=400)


@router.get("/sd35/gallery")
def gallery(state: State, max_items: Annotated[int, Query(ge=1, le=500)] = 48) -> dict[str, Any]:
    """The newest finished prompts, newest first: {"items": [{prompt_id, status, images, params, error}]}."""
    items = []
    for prompt_id, entry in reversed(list(state.queue.history.list(max_items).items())):
        images = [img for out in entry.get("outputs", {}).values() for img in out.get("images", [])]
        error = next(
            (m[1].get("exception_message") for m in entry["status"]["messages"] if m[0] == "execution_error"), None
        )
        interrupted = any(m[0] == "execution_interrupted" for m in entry["status"]["messages"])
        status = "interrupted" if interrupted else entry["status"]["status_str"]
        items.append(
            {
                "prompt_id": prompt_id,
                "status": status,
                "images": images,
                "params": params_from_prompt(entry["prompt"][2]),
                "error": error,
            }
        )
    return {"items": items}
