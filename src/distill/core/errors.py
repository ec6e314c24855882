"""The user-facing error types (one line each on the command line)."""

from __future__ import annotations


class ConfigError(ValueError):
    """A one-line, user-facing configuration error: the message starts with the config key (or the file) at fault."""
