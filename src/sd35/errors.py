"""Exception types shared by every layer (stdlib only). The CLI prints their message without a traceback."""

from __future__ import annotations


class SD35Error(Exception):
    """Base class of every error sd35 raises on purpose: the message is meant for a person."""


class UserInputError(SD35Error):
    """A request, flag or argument that cannot be honoured (bad size, unknown sampler, ...)."""


class CheckpointError(SD35Error):
    """A model file that cannot be read or does not hold what was asked for."""


class Cancelled(SD35Error):
    """Raised from a progress callback to stop work cleanly (Ctrl-C, /interrupt)."""
