"""WebSocket fan-out: the worker thread publishes ComfyUI messages; each connected client gets its own
asyncio queue drained by the connection's sender loop. Messages of a prompt go to its client_id only;
sid None goes to every client (ComfyUI `server.py` send_json)."""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

log = logging.getLogger(__name__)

MAX_BACKLOG = 2000  # messages waiting for one slow client before it is disconnected


class Connection:
    """One websocket: its sid and the queue its sender loop drains (None = close)."""

    def __init__(self, sid: str) -> None:
        self.sid = sid
        self.queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self.overflowed = False


class Hub:
    """Registry of live connections, bound to the event loop that serves them."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connections: dict[str, list[Connection]] = {}
        self._lock = threading.Lock()

    def bind(self, loop: asyncio.AbstractEventLoop | None) -> None:
        """Attach to the server's event loop (at startup) or detach (None, at shutdown)."""
        self._loop = loop

    def add(self, sid: str) -> Connection:
        connection = Connection(sid)
        with self._lock:
            self._connections.setdefault(sid, []).append(connection)
        return connection

    def remove(self, connection: Connection) -> None:
        with self._lock:
            group = self._connections.get(connection.sid, [])
            if connection in group:
                group.remove(connection)
            if not group:
                self._connections.pop(connection.sid, None)

    def count(self) -> int:
        with self._lock:
            return sum(len(g) for g in self._connections.values())

    def publish(self, message: dict[str, Any], sid: str | None = None) -> None:
        """Thread-safe: queue `message` for client `sid` (or everyone) on the server's loop."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(self._dispatch, message, sid)
        except RuntimeError:  # loop closed between the check and the call (shutdown)
            return

    def _dispatch(self, message: dict[str, Any], sid: str | None) -> None:
        with self._lock:
            if sid is None:
                targets = [c for group in self._connections.values() for c in group]
            else:
                targets = list(self._connections.get(sid, []))
        for connection in targets:
            if connection.queue.qsize() >= MAX_BACKLOG:
                if not connection.overflowed:
                    connection.overflowed = True
                    log.warning("websocket client %s is too slow; disconnecting it", connection.sid)
                    connection.queue.put_nowait(None)
                continue
            connection.queue.put_nowait(message)

    def close_all(self) -> None:
        """Ask every sender loop to close its socket (call on the event loop)."""
        with self._lock:
            targets = [c for group in self._connections.values() for c in group]
        for connection in targets:
            connection.queue.put_nowait(None)
