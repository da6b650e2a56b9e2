"""`sd35 serve`: the ComfyUI-compatible HTTP/WebSocket server with the web page (docs/server.md).

Loopback only (127.0.0.1:8188) unless --listen is given; --auth-token (or SD35_AUTH_TOKEN) makes every
route require the token."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import sys
from pathlib import Path
from typing import Any

from sd35.errors import UserInputError

log = logging.getLogger(__name__)
TOKEN_ENV = "SD35_AUTH_TOKEN"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="run the ComfyUI-compatible API server and web page",
        description="Serve a ComfyUI-compatible API (POST /prompt, /queue, /history, /view, WS /ws, ...) and a "
        "web page at /. Listens on 127.0.0.1 only unless --listen is given.",
    )
    parser.add_argument(
        "--listen",
        nargs="?",
        const="0.0.0.0",
        default=None,
        metavar="ADDR",
        help="address to listen on (no value: 0.0.0.0, every interface); default 127.0.0.1",
    )
    parser.add_argument("--port", type=int, default=8188, help="TCP port (default 8188)")
    parser.add_argument(
        "--models",
        type=Path,
        action="append",
        metavar="DIR",
        help="models folder (flat, or ComfyUI's checkpoints/ text_encoders/ clip/ vae/ layout); repeatable; "
        "default $SD35_MODELS or the config file",
    )
    parser.add_argument("--comfyui", type=Path, default=None, metavar="DIR", help="use a ComfyUI install's models/")
    parser.add_argument("--output-dir", type=Path, default=None, help="where images are saved (default: output)")
    parser.add_argument(
        "--input-dir", type=Path, default=None, help="uploads and LoadImage files (default: input beside output)"
    )
    parser.add_argument("--temp-dir", type=Path, default=None, help="PreviewImage files (default: temp beside output)")
    parser.add_argument(
        "--auth-token",
        default=None,
        metavar="TOKEN",
        help=f"require this token on every route (8+ chars of A-Z a-z 0-9 . _ ~ -); default ${TOKEN_ENV}",
    )
    parser.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:1, mps (default auto)")
    parser.add_argument(
        "--dtype",
        default=None,
        help="compute dtype: auto (bf16 on GPUs and CPUs with native bf16, else fp16/fp32), fp32, bf16, fp16",
    )
    parser.add_argument("--max-upload-mb", type=float, default=50.0, help="largest image upload (default 50)")
    cache = parser.add_mutually_exclusive_group()
    cache.add_argument("--cache-lru", type=int, default=None, metavar="N", help="keep N node outputs (LRU)")
    cache.add_argument("--cache-none", action="store_true", help="do not cache node outputs between prompts")
    parser.set_defaults(func=run)


def _is_loopback(address: str) -> bool:
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def _redacted_argv(argv: list[str]) -> tuple[str, ...]:
    """argv for /system_stats without the token's value."""
    out, hide = [], False
    for arg in argv:
        if hide:
            out.append("***")
            hide = False
        elif arg == "--auth-token":
            out.append(arg)
            hide = True
        elif arg.startswith("--auth-token="):
            out.append("--auth-token=***")
        else:
            out.append(arg)
    return tuple(out)


def build_services(args: argparse.Namespace) -> Any:
    """sd35.nodes.services.Services from the command line."""
    from sd35.nodes.paths import resolve_locations
    from sd35.nodes.services import Services
    from sd35.runtime.devices import DevicePolicy

    locations = resolve_locations(args.models or [], args.comfyui)
    output = (args.output_dir or locations.output_dir or Path("output")).expanduser()
    input_dir = (args.input_dir or locations.input_dir or output.parent / "input").expanduser()
    temp = (args.temp_dir or output.parent / "temp").expanduser()
    policy = DevicePolicy.create(args.device, args.dtype)
    log.info(
        "device %s, dtype %s; models: %s", policy.device, policy.dtype, ", ".join(map(str, locations.models.roots))
    )
    return Services.create(locations, output, policy=policy, input_dir=input_dir, temp_dir=temp)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from sd35.server import ServerConfig, create_app

    host = args.listen or "127.0.0.1"
    token = args.auth_token or os.environ.get(TOKEN_ENV) or None
    if not 0 < args.port < 65536:
        raise UserInputError(f"--port must be 1..65535, not {args.port}")
    if args.max_upload_mb <= 0:
        raise UserInputError("--max-upload-mb must be positive")
    max_upload = int(args.max_upload_mb * 1024 * 1024)
    config = ServerConfig(
        auth_token=token,
        loopback_only=_is_loopback(host),
        max_upload_bytes=max_upload,
        max_body_bytes=max_upload + 1024 * 1024,
        cache_entries=0 if args.cache_none else args.cache_lru,
        argv=_redacted_argv(sys.argv),
    )
    if not _is_loopback(host) and token is None:
        log.warning("listening on %s without --auth-token: anyone who can reach this port can run prompts", host)
    app = create_app(build_services(args), config=config)
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    log.info("sd35 serve: open http://%s:%d/%s", shown, args.port, "?token=..." if token else "")
    server = uvicorn.Server(
        uvicorn.Config(app, host=host, port=args.port, log_config=None, access_log=args.verbose, ws="auto")
    )
    server.run()
    return 0
