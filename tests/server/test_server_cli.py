"""`sd35 serve` command-line pieces: loopback detection, the token kept out of /system_stats, token format."""

from __future__ import annotations

import pytest

from sd35.cli.cmd_serve import _is_loopback, _redacted_argv
from sd35.errors import UserInputError
from sd35.server import ServerConfig
from sd35.server.security import is_loopback_host


def test_loopback_detection() -> None:
    assert _is_loopback("127.0.0.1") and _is_loopback("::1") and _is_loopback("localhost")
    assert not _is_loopback("0.0.0.0") and not _is_loopback("192.168.1.5") and not _is_loopback("example.org")
    assert is_loopback_host("127.0.0.1:8188") and is_loopback_host("[::1]:8188") and is_loopback_host("localhost")
    assert not is_loopback_host("127.0.0.1.evil.example") and not is_loopback_host("evil.example:8188")


def test_token_never_reaches_system_stats_argv() -> None:
    argv = ["sd35", "serve", "--auth-token", "secret-value-1", "--port", "1", "--auth-token=secret-value-2"]
    redacted = _redacted_argv(argv)
    assert "secret-value-1" not in " ".join(redacted) and "secret-value-2" not in " ".join(redacted)
    assert redacted[:4] == ("sd35", "serve", "--auth-token", "***")


@pytest.mark.parametrize("token", ["short", "has space in it", "semi;colon-token", "x" * 300])
def test_bad_tokens_are_refused(token: str) -> None:
    with pytest.raises(UserInputError):
        ServerConfig(auth_token=token)
