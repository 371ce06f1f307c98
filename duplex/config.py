"""The conversation config: the one typed schema of the keys a client may set (`start.config`, `configure`).

Each key is one `ConfigKey` entry (type, range, default, one-line doc, engines that take it) in
`CONFIG_SCHEMA`. Everything else derives from it: `validate_config` (the `/ws` protocol), the
engines' accepted keys (`DUPLEX_CONFIG_KEYS`, `CASCADE_CONFIG_KEYS`), the sampling defaults
(`models.sampling.SamplingSettings`), the `duplex client` flags, the `/api/chat` query clamping, and
the config table of docs/protocol.md (`markdown_table`, checked by a test).
"""

from __future__ import annotations

import math
import typing as tp
from dataclasses import dataclass

MAX_TOP_K = 500
MAX_TEMPERATURE = 5.0
SEED_LIMIT = 2**63
DEFAULT_SYSTEM_PROMPT = "You are a helpful voice assistant. Answer briefly, in plain spoken sentences."

DUPLEX, CASCADE = "duplex", "cascade"
BOTH = frozenset({DUPLEX, CASCADE})


class ConfigError(ValueError):
    """A config the server refuses; the message says which key and why, `key` names it (the `/ws` error's `param`)."""

    def __init__(self, message: str, key: str | None = None):
        super().__init__(message)
        self.key = key


@dataclass(frozen=True)
class ConfigKey:
    """One config key. `kind` float also takes a JSON integer; numbers are checked against [low, high]."""

    name: str
    kind: type                       # str, float, int, bool or list
    doc: str                         # one line: what it does (also the `duplex client` flag's help)
    engines: frozenset[str]          # the engines that take it; the others answer `unsupported`
    default: tp.Any = None           # what applies when the key is not given; None: see default_doc
    default_doc: str | None = None   # the default in words, where it is not a plain value
    low: float | None = None
    high: float | None = None
    high_open: bool = False          # the range is [low, high) rather than [low, high]
    wraps: bool = False              # out-of-range values wrap (abs, modulo) rather than clamp: any seed is as good
    shape: tp.Callable[[tp.Any], None] | None = None   # a further check of the value (raises ConfigError)

    @property
    def types(self) -> tuple[type, ...]:
        return (int, float) if self.kind is float else (self.kind,)

    @property
    def range_text(self) -> str:
        if self.low is None or self.high is None:
            return ""
        high = "2^63" if self.high == SEED_LIMIT else _number(self.high)
        return f"[{_number(self.low)}, {high}{')' if self.high_open else ']'}"

    def in_range(self, value: float) -> bool:
        if self.low is None or self.high is None:
            return True
        return self.low <= value and (value < self.high if self.high_open else value <= self.high)

    def check(self, value: tp.Any) -> tp.Any:
        """The value if it has this key's type and range; else ConfigError naming the key."""
        # bool is an int in Python: refuse it where a number is wanted.
        if not isinstance(value, self.types) or (isinstance(value, bool) and self.kind is not bool):
            names = "/".join(t.__name__ for t in self.types)
            raise ConfigError(f"config.{self.name} must be {names}, got {type(value).__name__}")
        if isinstance(value, float):
            self._finite(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not self.in_range(value):
            raise ConfigError(f"config.{self.name} must be in {self.range_text}")
        if self.shape is not None:
            self.shape(value)
        return value

    def _finite(self, value: float) -> None:
        if not math.isfinite(value):   # JSON readers take NaN and Infinity, and 1e999 is infinity
            raise ConfigError(f"config.{self.name} must be a finite number, got {value}")

    def fit(self, value: float) -> float:
        """A number brought into range and to this key's kind (for lenient inputs such as `/api/chat` query
        parameters). NaN and infinity are refused (ConfigError): no range holds them, no integer is one."""
        self._finite(value)
        if self.kind is int:
            value = int(value)
        if self.low is None or self.high is None or self.in_range(value):
            return value
        if self.wraps:
            return type(value)(abs(value) % self.high)
        return type(value)(min(max(value, self.low), self.high))


def _check_tools(tools: list) -> None:
    """Function tools in the chat-completions format, names unique."""
    names = set()
    for i, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not (isinstance(tool, dict) and tool.get("type") == "function" and isinstance(function, dict)):
            raise ConfigError(f'config.tools[{i}] must be {{"type": "function", "function": {{"name", "description", '
                              '"parameters"}}')
        name = function.get("name")
        if not (isinstance(name, str) and name and len(name) <= 64 and all(c.isalnum() or c in "_-" for c in name)):
            raise ConfigError(f"config.tools[{i}].function.name must be 1-64 letters, digits, _ or -")
        if name in names:
            raise ConfigError(f"config.tools: {name!r} is named twice")
        names.add(name)
        if not isinstance(function.get("description", ""), str) or not isinstance(function.get("parameters", {}), dict):
            raise ConfigError(f"config.tools[{i}]: description must be a string and parameters a JSON schema object")


def _check_tool_choice(choice: str) -> None:
    if not choice:
        raise ConfigError('config.tool_choice must be "auto", "none", "required" or a function name')


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


# The schema: one entry per key, in the order the docs and the client's --help list them.
CONFIG_SCHEMA: dict[str, ConfigKey] = {key.name: key for key in (
    ConfigKey("system_prompt", str, "the assistant's instructions: the cascade LLM's system prompt; a persona "
              "duplex model's role prompt (PersonaPlex, `<system>` tags added), set at `start`",
              BOTH, default=DEFAULT_SYSTEM_PROMPT, default_doc=f'"{DEFAULT_SYSTEM_PROMPT}"; duplex: none'),
    ConfigKey("voice", str, "assistant voice, a name from the server's own voices (another name, a path or a URL: `bad_message` "
              "naming them; a persona's: `unsupported`): "
              "the TTS voice; a persona duplex model's voice prompt from `--voices`, set at `start`",
              BOTH, default_doc="the TTS's default voice; duplex: none"),
    ConfigKey("temperature", float,
              "audio sampling temperature (0 = greedy); the cascade's LLM uses it when text_temperature is not given",
              BOTH, default=0.8, low=0, high=MAX_TEMPERATURE),
    ConfigKey("text_temperature", float, "text sampling temperature (0 = greedy): the duplex text stream, the cascade's LLM",
              BOTH, default=0.7, low=0, high=MAX_TEMPERATURE),
    ConfigKey("top_k", int, "audio top-k sampling: the duplex model's audio codebooks, the cascade TTS's", BOTH,
              default=250, low=1, high=MAX_TOP_K),
    ConfigKey("text_top_k", int, "text top-k sampling: the duplex text stream, the cascade's LLM (an "
              "OpenAI-compatible endpoint gets it as vLLM's extra parameter `top_k`)", BOTH, default=25,
              default_doc="`25`; cascade: none (the LLM's whole distribution; no `top_k` sent)",
              low=1, high=MAX_TOP_K),
    ConfigKey("seed", int, "random seed, for reproducible sampling; a new seed restarts the random stream",
              BOTH, default_doc="fresh entropy", low=0, high=SEED_LIMIT, high_open=True, wraps=True),
    ConfigKey("transcribe_user", bool,
              "duplex: also run the speech recogniser on the user's audio to get user transcripts",
              BOTH, default=False),
    ConfigKey("record", bool,
              "false: do not keep this conversation when the server records (`--record`); applies at `start`",
              BOTH, default=True),
    ConfigKey("cfg_coef", float, "a guided duplex model's classifier-free guidance (Hibiki): 1 = none; higher keeps "
              "the speaker's voice closer, too high hurts the translation (Kyutai: typically 3); other models: "
              "`unsupported`", frozenset({DUPLEX}), default=1.0, low=0, high=10),
    ConfigKey("condition", str, "a guided duplex model's condition, one of its own values (Hibiki: `very_bad`, `bad`, "
              "`neutral`, `good`, `very_good`; another: `bad_message` naming them); other models: `unsupported`",
              frozenset({DUPLEX}), default_doc="the model's own (Hibiki: `very_good`)"),
    ConfigKey("tools", list, "function tools the cascade's LLM may call, in the OpenAI chat-completions format "
              '(`{"type": "function", "function": {"name", "description", "parameters"}}`); each call comes as '
              "`tool_call`, answered with `tool_result`. `duplex client --tools FILE.py`: its functions",
              frozenset({CASCADE}), default_doc="none", shape=_check_tools),
    ConfigKey("tool_choice", str, '`auto`: the LLM decides; `none`: no calls; `required`: a call first; a function '
              "name: a call of that function first", frozenset({CASCADE}), default="auto", shape=_check_tool_choice),
    ConfigKey("tool_timeout_s", float, "the longest wait for a `tool_result`; past it the turn ends with `error` "
              "and the conversation goes on", frozenset({CASCADE}), default=30.0, low=0.1, high=600),
)}

CONFIG_KEYS: dict[str, tuple[type, ...]] = {name: key.types for name, key in CONFIG_SCHEMA.items()}


def keys_for(engine: str) -> frozenset[str]:
    """The config keys an engine takes."""
    return frozenset(name for name, key in CONFIG_SCHEMA.items() if engine in key.engines)


DUPLEX_CONFIG_KEYS = keys_for(DUPLEX)
CASCADE_CONFIG_KEYS = keys_for(CASCADE)


def default_of(name: str) -> tp.Any:
    return CONFIG_SCHEMA[name].default


def validate_config(config: tp.Any) -> dict[str, tp.Any]:
    """Checks a `config` object; returns a clean copy or raises ConfigError."""
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise ConfigError("`config` must be a JSON object")
    clean: dict[str, tp.Any] = {}
    for name, value in config.items():
        if name not in CONFIG_SCHEMA:
            raise ConfigError(f"unknown config key {name!r}; known: {sorted(CONFIG_SCHEMA)}", name)
        try:
            clean[name] = CONFIG_SCHEMA[name].check(value)
        except ConfigError as exc:
            exc.key = exc.key or name   # the type, range and shape checks word it; the key is this one
            raise
    return clean


def markdown_table() -> str:
    """The config table of docs/protocol.md (tests/test_config.py checks the doc holds exactly this)."""
    rows = ["| key | type | range | default | engines | meaning |", "|---|---|---|---|---|---|"]
    for key in CONFIG_SCHEMA.values():
        if key.default_doc is not None:
            default = key.default_doc
        elif isinstance(key.default, bool):
            default = f"`{str(key.default).lower()}`"
        elif isinstance(key.default, str):
            default = f'"{key.default}"'
        else:
            default = f"`{key.default}`"
        kind = {str: "string", float: "number", int: "integer", bool: "boolean", list: "array"}[key.kind]
        engines = ", ".join(e for e in (DUPLEX, CASCADE) if e in key.engines)
        rows.append(f"| `{key.name}` | {kind} | {key.range_text} | {default} | {engines} | {key.doc} |")
    return "\n".join(rows) + "\n"
