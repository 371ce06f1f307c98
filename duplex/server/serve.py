"""`duplex serve`: load the models once, then serve every conversation from one process."""

from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import signal
import ssl
from pathlib import Path

from aiohttp import web

from . import capacity
from .app import create_app
from .loading import StartupError, build_engines
from .recording import RecordingStore
from .settings import DEFAULT_STATIC, ServerSettings
from .supervisor import add_fleet_arguments, run_fleet

log = logging.getLogger("duplex")


def ssl_context(directory: str | None) -> ssl.SSLContext | None:
    if directory is None:
        return None
    cert, key = Path(directory) / "cert.pem", Path(directory) / "key.pem"
    missing = [str(p) for p in (cert, key) if not p.exists()]
    if missing:
        raise StartupError(f"--ssl {directory}: missing {', '.join(missing)}. Make a self-signed pair with:\n"
                           f"  openssl req -x509 -newkey rsa:2048 -nodes -days 365 -subj /CN=localhost "
                           f"-keyout {key} -out {cert}")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certfile=str(cert), keyfile=str(key))
    return context


async def serve(args: argparse.Namespace) -> None:
    context = ssl_context(args.ssl)
    recordings = recording_store(args)   # before the models load: a bad --record DIR fails at once
    engines = build_engines(args)
    static = None if args.static == "none" else Path(args.static)
    app = create_app(engines, ServerSettings(token=args.token, static_dir=static,
                                             speech_threshold_dbfs=args.speech_threshold_dbfs,
                                             max_connections=args.max_connections,
                                             start_timeout_s=args.start_timeout_s,
                                             opus_workers=args.opus_workers),
                     recordings=recordings)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port, ssl_context=context)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        if exc.errno == errno.EADDRINUSE:
            raise StartupError(f"port {args.port} on {args.host} is already in use: stop the other server "
                               f"or pick another port with --port") from None
        raise StartupError(f"cannot listen on {args.host}:{args.port}: {exc}") from None
    scheme = "https" if context else "http"
    port = runner.addresses[0][1]  # the real one when --port 0
    shown_host = "localhost" if args.host in ("0.0.0.0", "127.0.0.1", "::") else args.host
    slots = ", ".join(f"{name}: {e.health().get('slots', '?')} slots" for name, e in engines.items())
    log.info("serving on %s://%s:%d  (%s)  — open it in a browser, or: duplex client --url %s://%s:%d",
             scheme, shown_host, port, slots, scheme, shown_host, port)
    # A machine-readable line for scripts and tests that pass --port 0.
    print(f"DUPLEX_READY {scheme}://{args.host}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    if args.drain_s > 0:
        await capacity.drain_then_stop(app, args.drain_s, stop)
    log.info("shutting down")
    await runner.cleanup()


def recording_store(args: argparse.Namespace) -> RecordingStore | None:
    """`--record DIR`: the store of kept conversations (None: nothing is recorded)."""
    if args.record is None:
        if args.record_max_gb is not None:
            raise StartupError("--record-max-gb bounds the recordings of --record DIR: give --record too")
        return None
    from .recording_meta import server_meta, weights_job

    directory = Path(args.record)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / ".duplex-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise StartupError(f"--record {directory}: cannot write there ({exc.strerror or exc}); "
                           "pick a directory this user can write to") from None
    if args.record_max_gb is not None and args.record_max_gb <= 0:
        raise StartupError("--record-max-gb must be more than 0 (leave it out for no limit)")
    if not args.token and args.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("--record without --token on %s: anyone who can reach this port can download every "
                    "recording at /recordings; set --token", args.host)
    max_bytes = None if args.record_max_gb is None else int(args.record_max_gb * 1e9)
    return RecordingStore(directory, max_bytes, server_meta(args), weights_job(args))


def add_serve_parser(sub: argparse._SubParsersAction) -> None:
    from ..models.spec import PRESETS

    p = sub.add_parser("serve", help="load the models and serve conversations over WebSockets",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       description="Serve /ws (duplex protocol), /api/chat (Moshi-compatible), /health, "
                                   "/metrics and the browser client at /.")
    p.add_argument("--preset", choices=sorted(PRESETS), default="tiny",
                   help="model preset: " + "; ".join(f"{k} = {v.description}" for k, v in PRESETS.items()))
    p.add_argument("--moshi-spec", metavar="SPEC",
                   help="duplex model instead of the preset's: a Hugging Face repo id "
                        "(e.g. kyutai/moshiko-pytorch-bf16) or a local directory in the same layout")
    p.add_argument("--no-duplex", action="store_true", help="do not load a duplex model (serve the cascade only)")
    p.add_argument("--no-cascade", action="store_true", help="do not load the cascade (STT + LLM + TTS)")
    p.add_argument("--cascade-slots", type=int, default=4, help="cascade conversations served at once")
    p.add_argument("--stt-spec", metavar="SPEC", help="speech recogniser instead of the preset's (repo id or directory)")
    p.add_argument("--tts-spec", metavar="SPEC", help="speech synthesiser instead of the preset's (repo id or directory)")
    p.add_argument("--llm", metavar="SPEC", help="in-process LLM instead of the preset's: 'tiny', a repo id or a directory")
    p.add_argument("--llm-url", metavar="URL", help="an OpenAI-compatible chat-completions endpoint (vLLM, llama.cpp, "
                                                    "Ollama) instead of an in-process LLM; key from $DUPLEX_LLM_API_KEY")
    p.add_argument("--llm-model", help="model name sent to --llm-url")
    p.add_argument("--llm-timeout", type=float, default=10.0,
                   help="--llm-url: seconds without a new token before the turn fails with an error")
    p.add_argument("--llm-max-tokens", type=int, default=120, help="longest assistant reply, in LLM tokens")
    p.add_argument("--voice", help="default TTS voice (a name from the voices repository); clients may pick another")
    p.add_argument("--voices", metavar="DIR",
                   help="persona duplex models (PersonaPlex): the folder of voice prompts (WAV files) that a "
                        "conversation's config.voice (or /api/chat's voice_prompt) names; default: the "
                        "checkpoint's own voices.tgz, unpacked")
    p.add_argument("--prefill", choices=["parallel", "nocache", "stepped"], default="parallel",
                   help="how a persona prompt goes into its slot: parallel passes between ticks with a cache of "
                        "seen personas; the same without the cache; or stepped one frame per model step, "
                        "stalling everyone (PersonaPlex's own way; for comparison)")
    p.add_argument("--prefix-cache-mb", type=float, default=256.0,
                   help="memory for prefilled persona prompts (least recently used evicted); 0 = no cache")
    p.add_argument("--end-of-turn-silence-ms", type=float, default=640.0,
                   help="cascade: user silence that ends a turn (the STT's pause head may end it sooner)")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (0.0.0.0 for every interface)")
    p.add_argument("--port", type=int, default=8998, help="TCP port (0 picks a free one, printed at start)")
    p.add_argument("--device", default="auto", help="torch device: auto (cuda when available, else cpu), cpu, cuda, cuda:1")
    p.add_argument("--dtype", choices=["auto", "bfloat16", "float16", "float32"], default="auto",
                   help="LM weights dtype: auto = bfloat16 on CUDA, float32 on CPU")
    p.add_argument("--threads", type=int, default=0,
                   help="torch intra-op threads; 0 = auto (on CPU every core but one, left to the event loop)")
    p.add_argument("--slots", type=int, default=8,
                   help="batch size: conversations served at once by one model step (fixed for the run)")
    p.add_argument("--max-wait-ms", type=float, default=None,
                   help="a tick runs when every active slot has a frame, or when the oldest waiting frame has "
                        "waited this long; default (auto): as long as its answer can still come within one 80 ms "
                        "frame (80 - step time - 5 ms), or one tick per frame period once steps take over 40 ms "
                        "(docs/architecture.md, 'The tick')")
    p.add_argument("--max-queue-frames", type=int, default=125,
                   help="per-conversation input queue bound in 80 ms frames; past it the oldest frame is "
                        "dropped (and counted) so a client sending faster than real time cannot grow memory")
    p.add_argument("--interrupt-hold-ms", type=float, default=2000.0,
                   help="after `interrupt`, the duplex model stays silent this long (longer while the user speaks)")
    p.add_argument("--speech-threshold-dbfs", type=float, default=-45.0,
                   help="energy above which a frame counts as speech (turn detection, latency metrics)")
    p.add_argument("--token", help="access token required from clients (?token= or Authorization: Bearer)")
    p.add_argument("--max-connections", type=int, default=1000,
                   help="conversation sockets (/ws and /api/chat together) open at once; past it a new one is "
                        "closed 1013 'server full' (/ws: after an `error` capacity). 0 = no limit")
    p.add_argument("--opus-workers", type=int, default=1,
                   help="processes that encode the assistant's Ogg Opus (sphn holds the GIL: encoding on the event "
                        "loop takes time from the sockets and the model thread); 0 = encode on the event loop")
    p.add_argument("--start-timeout-s", type=float, default=30.0,
                   help="a /ws socket with no conversation this long after opening or after `stop` gets `error` "
                        "not_started and is closed 1008; an /api/chat socket, when no audio came this long "
                        "after the handshake. 0 = never")
    p.add_argument("--ssl", metavar="DIR", help="serve https/wss with DIR/key.pem and DIR/cert.pem "
                                                "(browsers need a secure context for the microphone off localhost)")
    p.add_argument("--static", default=str(DEFAULT_STATIC),
                   help="directory served at / (the browser client); 'none' to serve no page")
    p.add_argument("--record", metavar="DIR",
                   help="keep every conversation in DIR (one folder each: stereo audio.wav, events.jsonl, meta.json; "
                        "see docs/recordings.md), listed at GET /recordings; a client opts out with config.record "
                        "false. Off by default")
    p.add_argument("--record-max-gb", type=float, default=None,
                   help="with --record: the most disk DIR may use; past it the oldest recordings are deleted "
                        "(logged). Default: no limit")
    p.add_argument("--drain-s", type=float, default=0.0,
                   help="on SIGTERM, refuse new conversations (/health and /ready turn 503) and wait up to this "
                        "long for the open ones to end before closing them (1001); a second SIGTERM stops at once")
    add_fleet_arguments(p)
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"], help="log verbosity")
    p.add_argument("--quiet-progress", action="store_true", help="no progress bars (for logs and CI)")
    p.set_defaults(func=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    from ..models.spec import WeightsUnavailable

    if args.workers or args.gpus:
        return run_fleet(args)   # a supervisor of `duplex serve` workers (supervisor.py)
    try:
        asyncio.run(serve(args))
    except (StartupError, WeightsUnavailable) as exc:
        log.error("%s", exc)
        return 2
    return 0
