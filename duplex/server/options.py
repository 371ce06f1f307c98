"""`duplex serve`'s options: one frozen dataclass, parsed once from the command line.

Each field is a flag: its name (`--cascade-slots` for `cascade_slots`), type and default are the field's,
its help text and choices are in the field's metadata, so `--help`, the parser and the typed object
cannot disagree. `serve.py` parses the command line into a `ServeOptions`; nothing below it sees an
`argparse.Namespace`. `to_argv` writes options back as flags (the fleet's supervisor starts each worker
with them), and `parse_serve_options(to_argv(o)) == o` for every `o` (tests/test_options.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import typing as tp
from dataclasses import dataclass, field
from pathlib import Path

from .settings import DEFAULT_STATIC

TOKEN_ENV = "DUPLEX_TOKEN"   # the access token by environment (the fleet's workers get it so, never by argv)
FLEET_GROUP = "several workers on one machine (docs/deploy.md)"
LB_QUEUE_TIMEOUT_S = 2.0   # how long HAProxy queues a new conversation for a free slot (fleet/haproxy.py)


def flag(help: str, *, choices: tp.Sequence[str] | tp.Callable[[], tp.Sequence[str]] | None = None,
         metavar: str | None = None, group: str | None = None, help_extra: tp.Callable[[], str] | None = None) -> dict:
    """A field's flag: help text, choices (or a function that lists them when the parser is built), metavar,
    the help section it is listed in, and a function that appends to the help (e.g. the presets' descriptions)."""
    return {"help": help, "choices": choices, "metavar": metavar, "group": group, "help_extra": help_extra}


def _presets() -> list[str]:
    from ..models.spec import PRESETS   # the composition root's: the presets the server can load

    return sorted(PRESETS)


def _preset_help() -> str:
    from ..models.spec import PRESETS

    return "; ".join(f"{k} = {v.description}" for k, v in PRESETS.items())


@dataclass(frozen=True)
class ServeOptions:
    # --- models ---
    preset: str = field(default="tiny", metadata=flag("model preset: ", choices=_presets, help_extra=_preset_help))
    moshi_spec: str | None = field(default=None, metadata=flag(
        "duplex model instead of the preset's: a Hugging Face repo id (e.g. kyutai/moshiko-pytorch-bf16) or a local "
        "directory in the same layout", metavar="SPEC"))
    no_duplex: bool = field(default=False, metadata=flag("do not load a duplex model (serve the cascade only)"))
    no_cascade: bool = field(default=False, metadata=flag("do not load the cascade (STT + LLM + TTS)"))
    cascade_slots: int = field(default=4, metadata=flag("cascade conversations served at once"))
    stt_spec: str | None = field(default=None, metadata=flag(
        "speech recogniser instead of the preset's (repo id or directory)", metavar="SPEC"))
    tts_spec: str | None = field(default=None, metadata=flag(
        "speech synthesiser instead of the preset's (repo id or directory)", metavar="SPEC"))
    llm: str | None = field(default=None, metadata=flag(
        "in-process LLM instead of the preset's: 'tiny', a repo id or a directory", metavar="SPEC"))
    llm_url: str | None = field(default=None, metadata=flag(
        "an OpenAI-compatible chat-completions endpoint (vLLM, llama.cpp, Ollama) instead of an in-process LLM; "
        "key from $DUPLEX_LLM_API_KEY", metavar="URL"))
    llm_model: str | None = field(default=None, metadata=flag("model name sent to --llm-url"))
    llm_timeout: float = field(default=10.0, metadata=flag(
        "--llm-url: seconds without a new token before the turn fails with an error"))
    llm_max_tokens: int = field(default=120, metadata=flag("longest assistant reply, in LLM tokens"))
    llm_words_ahead: int = field(default=4, metadata=flag(
        "read the LLM's reply at most this many words ahead of what the TTS has taken up, so that a fast LLM does "
        "not take the CPU from the TTS's first frame (0: read it as fast as it comes; docs/cascade.md, Pacing)"))
    stt_process: str = field(default="auto", metadata=flag(
        "run the speech recogniser in its own process, so that its steps do not wait on the other model threads "
        "for Python's interpreter lock (docs/cascade.md); auto: on for --device cpu, off on CUDA (not measured there)",
        choices=("auto", "on", "off")))
    tts_process: str = field(default="auto", metadata=flag(
        "run the speech synthesiser in its own process, for the same reason (a turn's first frame is 19 steps "
        "back to back, while the LLM writes); auto: on for --device cpu, off on CUDA (not measured there)",
        choices=("auto", "on", "off")))
    voice: str | None = field(default=None, metadata=flag(
        "default TTS voice (a name from the voices repository); clients may pick another"))
    voices: str | None = field(default=None, metadata=flag(
        "persona duplex models (PersonaPlex): the folder of voice prompts (WAV files) that a conversation's "
        "config.voice (or /api/chat's voice_prompt) names; default: the checkpoint's own voices.tgz, unpacked",
        metavar="DIR"))
    prefill: str = field(default="parallel", metadata=flag(
        "how a persona prompt goes into its slot: parallel passes between ticks with a cache of seen personas; the "
        "same without the cache; or stepped one frame per model step, stalling everyone (PersonaPlex's own way; "
        "for comparison)", choices=("parallel", "nocache", "stepped")))
    prefix_cache_mb: float = field(default=256.0, metadata=flag(
        "memory for prefilled persona prompts (least recently used evicted); 0 = no cache"))
    guidance: str = field(default="on", metadata=flag(
        "a conditioned duplex model (Hibiki): on = classifier-free guidance per conversation (config cfg_coef; two "
        "model rows each); off = one row each, as moshi runs at cfg_coef 1 (half the cost; cfg_coef other than 1 is "
        "unsupported, config condition still taken)", choices=("on", "off")))
    end_of_turn_silence_ms: float = field(default=640.0, metadata=flag(
        "cascade: user silence that ends a turn (the energy rule; with the pause rule, the longest quiet before an end)"))
    end_of_turn_rule: str = field(default="auto", metadata=flag(
        "cascade: how a user turn ends. pause: the STT's pause head (smoothed) ends it and calls barge-ins; energy: "
        "--end-of-turn-silence-ms of quiet, and speech over the assistant is a barge-in; auto: pause when the STT has "
        "a pause head and trained weights (not a tiny preset's random ones), else energy. /health says which is live",
        choices=("auto", "pause", "energy")))
    pause_ema: float = field(default=0.5, metadata=flag(
        "pause rule: weight of each new pause probability in its exponential moving average (1 = no smoothing)"))
    pause_end_threshold: float = field(default=0.6, metadata=flag(
        "pause rule: the smoothed pause probability at or above this, after --min-pause-ms of quiet, ends the turn"))
    pause_barge_in_threshold: float = field(default=0.4, metadata=flag(
        "pause rule: the smoothed pause probability below this while the assistant speaks is a barge-in"))
    min_pause_ms: float = field(default=160.0, metadata=flag(
        "pause rule: the least quiet before the pause head may end a turn"))
    barge_in_grace_ms: float = field(default=3000.0, metadata=flag(
        "pause rule: no barge-in by the pause head in the first this-many ms of the assistant's speech"))
    # --- listening ---
    host: str = field(default="127.0.0.1", metadata=flag("interface to listen on (0.0.0.0 for every interface)"))
    port: int = field(default=8998, metadata=flag("TCP port (0 picks a free one, printed at start)"))
    # --- device and batching ---
    device: str = field(default="auto", metadata=flag(
        "torch device: auto (cuda when available, else cpu), cpu, cuda, cuda:1"))
    dtype: str = field(default="auto", metadata=flag(
        "LM weights dtype: auto = bfloat16 on CUDA, float32 on CPU", choices=("auto", "bfloat16", "float16", "float32")))
    threads: int = field(default=0, metadata=flag(
        "torch intra-op threads; 0 = auto (on CPU every core but one, left to the event loop)"))
    slots: int = field(default=8, metadata=flag(
        "batch size: conversations served at once by one model step (fixed for the run)"))
    max_wait_ms: float | None = field(default=None, metadata=flag(
        "a tick runs when every active slot has a frame, or when the oldest waiting frame has waited this long; "
        "default (auto): as long as its answer can still come within one 80 ms frame (80 - step time - 5 ms), or "
        "one tick per frame period once steps take over 40 ms (docs/architecture.md, 'The tick')"))
    max_queue_frames: int = field(default=125, metadata=flag(
        "per-conversation input queue bound in 80 ms frames; past it the oldest frame is dropped (and counted) so a "
        "client sending faster than real time cannot grow memory"))
    interrupt_hold_ms: float = field(default=2000.0, metadata=flag(
        "after `interrupt`, the duplex model stays silent this long (longer while the user speaks)"))
    speech_threshold_dbfs: float = field(default=-45.0, metadata=flag(
        "energy above which a frame counts as speech (turn detection, latency metrics)"))
    # --- access and limits ---
    token: str | None = field(default=None, metadata=flag(
        "access token required from clients (?token= or Authorization: Bearer). On the command line it is exposed to "
        f"every user of this machine (ps, /proc/PID/cmdline) and to shell history: prefer --token-file or ${TOKEN_ENV}"))
    token_file: str | None = field(default=None, metadata=flag(
        f"read the access token from this file (its content, blank lines and spaces around it stripped: e.g. a "
        f"mounted Kubernetes Secret); without --token or --token-file, ${TOKEN_ENV} gives it", metavar="PATH"))
    max_connections: int = field(default=1000, metadata=flag(
        "conversation sockets (/ws, /api/chat and /v1/realtime together) open at once; past it a new one is closed "
        "1013 'server full' (/ws: after an `error` capacity). 0 = no limit"))
    opus_workers: int = field(default=1, metadata=flag(
        "processes that encode the assistant's Ogg Opus (sphn holds the GIL: encoding on the event loop takes time "
        "from the sockets and the model thread); 0 = encode on the event loop"))
    start_timeout_s: float = field(default=30.0, metadata=flag(
        "a /ws socket with no conversation this long after opening or after `stop` gets `error` not_started and is "
        "closed 1008; an /api/chat socket, when no audio came this long after the handshake. 0 = never"))
    webrtc_silence_s: float = field(default=10.0, metadata=flag(
        "a WebRTC call whose peer sends an audio track and has sent no audio this long is ended and its slot freed "
        "(a peer that never connects is ended after --start-timeout-s). 0 = never"))
    webrtc_ice_servers: str | None = field(default=None, metadata=flag(
        "STUN or TURN servers for WebRTC calls' ICE, comma-separated, e.g. stun:stun.example.org:3478; without "
        "them the server offers its host candidates only (loopback and LAN, docs/webrtc.md)", metavar="URLS"))
    ssl: str | None = field(default=None, metadata=flag(
        "serve https/wss with DIR/key.pem and DIR/cert.pem (browsers need a secure context for the microphone off "
        "localhost)", metavar="DIR"))
    static: str = field(default=str(DEFAULT_STATIC), metadata=flag(
        "directory served at / (the browser client); 'none' to serve no page"))
    # --- recordings ---
    record: str | None = field(default=None, metadata=flag(
        "keep every conversation in DIR (one folder each: stereo audio.wav, events.jsonl, meta.json; see "
        "docs/recordings.md), listed at GET /recordings; a client opts out with config.record false. Off by default",
        metavar="DIR"))
    record_max_gb: float | None = field(default=None, metadata=flag(
        "with --record: the most disk DIR may use; past it the oldest recordings are deleted (logged). "
        "Default: no limit"))
    drain_s: float = field(default=0.0, metadata=flag(
        "on SIGTERM, refuse new conversations (/health and /ready turn 503) and wait up to this long for the open "
        "ones to end before closing them (1001); a second SIGTERM stops at once"))
    # --- a fleet of workers (fleet/supervisor.py) ---
    gpus: str | None = field(default=None, metadata=flag(
        "one worker per GPU: 'all' or device numbers, e.g. 0,1,2,3 (each worker sees only its GPU through "
        "CUDA_VISIBLE_DEVICES); the other flags apply to every worker", metavar="LIST", group=FLEET_GROUP))
    workers: int = field(default=0, metadata=flag(
        "N worker processes on this device (CPU: the tiny preset, tests); 0 = one process, no supervisor",
        group=FLEET_GROUP))
    haproxy: bool = field(default=False, metadata=flag(
        "with --gpus/--workers: start HAProxy on --host:--port in front of the workers (which listen on the next "
        "ports); without it the workers listen on --port, --port+1, ...", group=FLEET_GROUP))
    lb_queue_timeout_s: float = field(default=LB_QUEUE_TIMEOUT_S, metadata=flag(
        "--haproxy: how long a new conversation waits for a free slot before a 503 capacity", group=FLEET_GROUP))
    # --- logs ---
    log_level: str = field(default="info", metadata=flag("log verbosity", choices=("debug", "info", "warning", "error")))
    quiet_progress: bool = field(default=False, metadata=flag("no progress bars (for logs and CI)"))

    @property
    def fleet(self) -> bool:
        """A supervisor of worker processes rather than one server."""
        return bool(self.workers or self.gpus)

    def to_argv(self) -> list[str]:
        """The flags that give these options: every field that differs from its default."""
        argv: list[str] = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value == f.default:
                continue
            if value is True:
                argv.append(option_name(f))
            elif str(value).startswith("-"):   # a value argparse would take for a flag: `--token=-x`
                argv.append(f"{option_name(f)}={value}")
            else:
                argv += [option_name(f), str(value)]
        return argv


class OptionsError(ValueError):
    """Options that cannot be served as given (the message says which flag and why)."""


def access_token(options: ServeOptions, environ: tp.Mapping[str, str] = os.environ) -> str | None:
    """The token clients must give: `--token`, else the content of `--token-file`, else `$DUPLEX_TOKEN` (None: no
    token). Resolved once at start (a server, or a supervisor that hands it to its workers by environment)."""
    if options.token is not None and options.token_file is not None:
        raise OptionsError("give --token or --token-file, not both")
    if options.token is not None:
        return options.token or None
    if options.token_file is not None:
        try:
            token = Path(options.token_file).read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise OptionsError(f"--token-file {options.token_file}: cannot read it "
                               f"({getattr(exc, 'strerror', None) or exc})") from None
        if not token:
            raise OptionsError(f"--token-file {options.token_file} is empty")
        return token
    return environ.get(TOKEN_ENV) or None


def option_name(f: dataclasses.Field) -> str:
    return "--" + f.name.replace("_", "-")


# The parser's type for a field, from its annotation (`from __future__ import annotations`: a string).
_TYPES: dict[str, tp.Callable[[str], tp.Any]] = {
    "str": str, "str | None": str, "int": int, "int | None": int, "float": float, "float | None": float}


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per field of `ServeOptions`, in field order, grouped as the metadata says."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in dataclasses.fields(ServeOptions):
        meta = f.metadata
        target: argparse._ActionsContainer = parser
        if meta["group"]:
            target = groups.get(meta["group"]) or groups.setdefault(meta["group"], parser.add_argument_group(meta["group"]))
        help_text = meta["help"] + (meta["help_extra"]() if meta["help_extra"] else "")
        if f.type == "bool":
            target.add_argument(option_name(f), action="store_true", help=help_text)
            continue
        choices = meta["choices"]() if callable(meta["choices"]) else meta["choices"]
        target.add_argument(option_name(f), type=_TYPES[str(f.type)], default=f.default, choices=choices,
                            metavar=meta["metavar"], help=help_text)


def options_from_namespace(args: argparse.Namespace) -> ServeOptions:
    """The parsed command line as options (the one place a Namespace becomes typed)."""
    return ServeOptions(**{f.name: getattr(args, f.name) for f in dataclasses.fields(ServeOptions)})


def parse_serve_options(argv: tp.Sequence[str]) -> ServeOptions:
    """`duplex serve`'s flags -> options (what the supervisor's workers will parse from `to_argv`)."""
    parser = argparse.ArgumentParser(prog="duplex serve", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_serve_arguments(parser)
    return options_from_namespace(parser.parse_args(list(argv)))
