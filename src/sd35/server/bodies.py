"""JSON request bodies read the way ComfyUI's aiohttp handlers read them: parsed whatever the
Content-Type says (ComfyUI clients often send none), then checked against a pydantic model. FastAPI only
parses bodies declared application/json, so the routes read them with `read_json` and describe them in
the OpenAPI document with `openapi_body`."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

Model = TypeVar("Model", bound=BaseModel)


def openapi_body(model: type[BaseModel], *, required: bool = True) -> dict[str, Any]:
    """`openapi_extra` describing a JSON body of `model` (models here have no nested $defs)."""
    schema = model.model_json_schema()
    return {"requestBody": {"required": required, "content": {"application/json": {"schema": schema}}}}


def _invalid(message: str, kind: str = "json_invalid") -> RequestValidationError:
    return RequestValidationError([{"loc": ("body",), "msg": message, "type": kind}])


async def read_json(request: Request, model: type[Model], *, optional: bool = False) -> Model | None:
    """The body as `model`; None for an empty body when `optional`. Raises RequestValidationError (400)."""
    raw = await request.body()
    if not raw.strip():
        if optional:
            return None
        raise _invalid("a JSON body is required", "missing")
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        raise _invalid("the body is not valid JSON") from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False, include_context=False)) from None
