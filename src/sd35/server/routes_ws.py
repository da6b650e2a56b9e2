"""WS /ws?clientId=...: ComfyUI's JSON messages {"type", "data"}. On connect the client gets `status`
with its sid; then every message of the prompts it submitted (client_id) and every broadcast.
A first message {"type": "feature_flags"} is answered with the server's flags."""

from __future__ import annotations

import json
import logging
import re
import uuid

import anyio
from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from .hub import Connection
from .state import ServerState

log = logging.getLogger(__name__)
router = APIRouter()
CLIENT_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


async def _sender(websocket: WebSocket, connection: Connection, scope: anyio.CancelScope) -> None:
    """Forward queued messages until the hub asks to close (None), then end the connection."""
    try:
        while True:
            message = await connection.queue.get()
            if message is None:
                return
            await websocket.send_text(json.dumps(message))
    except (WebSocketDisconnect, RuntimeError, OSError):
        return  # the client went away; the receiver sees it too
    finally:
        scope.cancel()


async def _receiver(websocket: WebSocket, state: ServerState) -> None:
    """Read client messages until it disconnects; answer a feature_flags message."""
    while True:
        text = await websocket.receive_text()
        if len(text) > 65536:
            continue
        try:
            message = json.loads(text)
        except ValueError:
            continue
        if isinstance(message, dict) and message.get("type") == "feature_flags":
            flags = {"supports_preview_metadata": False, "max_upload_size": state.config.max_upload_bytes}
            await websocket.send_text(json.dumps({"type": "feature_flags", "data": flags}))


@router.websocket("/ws")
async def websocket_endpoint(websocket: WebSocket) -> None:
    state: ServerState = websocket.app.state.sd35
    requested = websocket.query_params.get("clientId") or ""
    sid = requested if CLIENT_ID.fullmatch(requested) else uuid.uuid4().hex
    await websocket.accept()
    connection = state.hub.add(sid)
    try:
        await websocket.send_text(json.dumps(state.queue.status_message(sid)))
        async with anyio.create_task_group() as group:
            group.start_soon(_sender, websocket, connection, group.cancel_scope)
            try:
                await _receiver(websocket, state)
            except (WebSocketDisconnect, RuntimeError, OSError):
                pass
            finally:
                group.cancel_scope.cancel()
    except (WebSocketDisconnect, RuntimeError, OSError):
        pass
    finally:
        state.hub.remove(connection)
