"""The conversation config: the keys a client may set (`start.config`, `configure`), their types and ranges.

One schema for every entry point (the `/ws` protocol, `/api/chat` query parameters, the engines'
sampling limits); each engine then says which keys it takes.
"""

from __future__ import annotations

import typing as tp

# config keys and the type each must have; numbers are range-checked in `validate_config`.
CONFIG_KEYS: dict[str, tuple[type, ...]] = {
    "system_prompt": (str,),
    "voice": (str,),
    "temperature": (int, float),
    "text_temperature": (int, float),
    "top_k": (int,),
    "text_top_k": (int,),
    "seed": (int,),
    "transcribe_user": (bool,),
}
MAX_TOP_K = 500
MAX_TEMPERATURE = 5.0


class ConfigError(ValueError):
    """A config the server refuses; the message says which key and why."""


def validate_config(config: tp.Any) -> dict[str, tp.Any]:
    """Checks a `config` object; returns a clean copy or raises ConfigError."""
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise ConfigError("`config` must be a JSON object")
    clean: dict[str, tp.Any] = {}
    for key, value in config.items():
        if key not in CONFIG_KEYS:
            raise ConfigError(f"unknown config key {key!r}; known: {sorted(CONFIG_KEYS)}")
        types = CONFIG_KEYS[key]
        # bool is an int in Python: refuse it where a number is wanted.
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            names = "/".join(t.__name__ for t in types)
            raise ConfigError(f"config.{key} must be {names}, got {type(value).__name__}")
        if key in ("temperature", "text_temperature") and not 0 <= value <= MAX_TEMPERATURE:
            raise ConfigError(f"config.{key} must be in [0, {MAX_TEMPERATURE}]")
        if key in ("top_k", "text_top_k") and not 1 <= value <= MAX_TOP_K:
            raise ConfigError(f"config.{key} must be in [1, {MAX_TOP_K}]")
        if key == "seed" and not 0 <= value < 2**63:
            raise ConfigError("config.seed must be in [0, 2^63)")
        clean[key] = value
    return clean
