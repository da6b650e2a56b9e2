"""What every route needs, in one object stored on `app.state.sd35`: config, services, registry, queue,
websocket hub and the folders /view and uploads may touch."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import Request

from sd35.errors import UserInputError
from sd35.workflow import NodeRegistry

from .files import Folders
from .hub import Hub
from .queue import PromptQueue

TOKEN_PATTERN = re.compile(r"[A-Za-z0-9._~-]{8,256}")
MiB = 1024 * 1024


@dataclass(frozen=True)
class ServerConfig:
    """Server settings. `loopback_only`: answer only to localhost Host names (the default unless
    --listen); `auth_token`: required on every route when set (8+ characters of A-Z a-z 0-9 . _ ~ -);
    `max_body_bytes`: any request body; `max_upload_bytes`: one uploaded image; `history_size`: how
    many finished prompts /history keeps; `cache_entries`: None = ComfyUI's classic output cache,
    N = LRU of N node outputs, 0 = no caching; `argv`: shown by /system_stats."""

    auth_token: str | None = None
    loopback_only: bool = True
    max_body_bytes: int = 64 * MiB
    max_upload_bytes: int = 50 * MiB
    history_size: int = 10000
    cache_entries: int | None = None
    argv: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.auth_token is not None and not TOKEN_PATTERN.fullmatch(self.auth_token):
            raise UserInputError("--auth-token must be 8 to 256 characters of A-Z, a-z, 0-9, '.', '_', '~', '-'")


@dataclass
class ServerState:
    config: ServerConfig
    services: Any
    registry: NodeRegistry
    queue: PromptQueue
    hub: Hub
    folders: Folders


def get_state(request: Request) -> ServerState:
    """FastAPI dependency: the server's state."""
    return request.app.state.sd35


def folders_of(services: Any) -> Folders:
    """The output/input/temp folders of a Services object (attributes output_dir, input_dir, temp_dir)."""
    output = Path(services.output_dir)
    input_dir = Path(getattr(services, "input_dir", None) or output.parent / "input")
    temp = Path(getattr(services, "temp_dir", None) or output.parent / "temp")
    return Folders(output=output, input=input_dir, temp=temp)
