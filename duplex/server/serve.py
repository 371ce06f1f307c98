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
from .fleet import run_fleet
from .loading import StartupError, build_engines
from .options import OptionsError, ServeOptions, access_token, add_serve_arguments, options_from_namespace
from .recording import RecordingStore
from .settings import ServerSettings

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


async def serve(options: ServeOptions) -> None:
    try:
        token = access_token(options)   # --token, --token-file or $DUPLEX_TOKEN; never logged
    except OptionsError as exc:
        raise StartupError(str(exc)) from None
    context = ssl_context(options.ssl)
    recordings = recording_store(options, token)   # before the models load: a bad --record DIR fails at once
    engines = build_engines(options)
    static = None if options.static == "none" else Path(options.static)
    app = create_app(engines, ServerSettings(token=token, static_dir=static,
                                             speech_threshold_dbfs=options.speech_threshold_dbfs,
                                             max_connections=options.max_connections,
                                             start_timeout_s=options.start_timeout_s,
                                             webrtc_silence_s=options.webrtc_silence_s,
                                             webrtc_ice_servers=_urls(options.webrtc_ice_servers),
                                             opus_workers=options.opus_workers),
                     recordings=recordings)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, options.host, options.port, ssl_context=context)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        if exc.errno == errno.EADDRINUSE:
            raise StartupError(f"port {options.port} on {options.host} is already in use: stop the other server "
                               f"or pick another port with --port") from None
        raise StartupError(f"cannot listen on {options.host}:{options.port}: {exc}") from None
    scheme = "https" if context else "http"
    port = runner.addresses[0][1]  # the real one when --port 0
    shown_host = "localhost" if options.host in ("0.0.0.0", "127.0.0.1", "::") else options.host
    slots = ", ".join(f"{name}: {e.health().get('slots', '?')} slots" for name, e in engines.items())
    log.info("serving on %s://%s:%d  (%s)  — open it in a browser, or: duplex client --url %s://%s:%d",
             scheme, shown_host, port, slots, scheme, shown_host, port)
    # A machine-readable line for scripts and tests that pass --port 0.
    print(f"DUPLEX_READY {scheme}://{options.host}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    if options.drain_s > 0:
        await capacity.drain_then_stop(app, options.drain_s, stop)
    log.info("shutting down")
    await runner.cleanup()


def recording_store(options: ServeOptions, token: str | None) -> RecordingStore | None:
    """`--record DIR`: the store of kept conversations (None: nothing is recorded)."""
    if options.record is None:
        if options.record_max_gb is not None:
            raise StartupError("--record-max-gb bounds the recordings of --record DIR: give --record too")
        return None
    from .loading import device_and_dtype, model_specs, weight_files
    from .recording.meta import server_meta, weights_job

    directory = Path(options.record)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / ".duplex-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise StartupError(f"--record {directory}: cannot write there ({exc.strerror or exc}); "
                           "pick a directory this user can write to") from None
    if options.record_max_gb is not None and options.record_max_gb <= 0:
        raise StartupError("--record-max-gb must be more than 0 (leave it out for no limit)")
    if not token and options.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("--record without --token on %s: anyone who can reach this port can download every "
                    "recording at /recordings; set --token-file or $DUPLEX_TOKEN", options.host)
    max_bytes = None if options.record_max_gb is None else int(options.record_max_gb * 1e9)
    specs = model_specs(options)
    return RecordingStore(directory, max_bytes, server_meta(options, specs, *device_and_dtype(options)),
                          weights_job(specs, weight_files))


def add_serve_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="load the models and serve conversations over WebSockets",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       description="Serve /ws (duplex protocol), /api/chat (Moshi-compatible), /v1/realtime (OpenAI "
                                   "Realtime), /health, /metrics and the browser client at /.")
    add_serve_arguments(p)
    p.set_defaults(func=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    options = options_from_namespace(args)   # the last the server sees of argparse
    if options.fleet:
        return run_fleet(options)   # a supervisor of `duplex serve` workers (fleet/supervisor.py)
    try:
        asyncio.run(serve(options))
    except StartupError as exc:
        log.error("%s", exc)
        return 2
    return 0


def _urls(text: str | None) -> tuple[str, ...]:
    """`--webrtc-ice-servers a,b` as a tuple of URLs."""
    return tuple(url.strip() for url in (text or "").split(",") if url.strip())
