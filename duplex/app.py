"""The aiohttp application: an app factory, thin handlers, state on the app, clean start/stop hooks."""

from __future__ import annotations

import asyncio
import hmac
import logging
from dataclasses import dataclass
from pathlib import Path

from aiohttp import WSMsgType, web

from . import protocol
from .engines.base import Engine
from .metrics import ServerMetrics
from .moshi_compat import handle_chat
from .outbox import SlowReader
from .session import Session, TooManyBadMessages

log = logging.getLogger(__name__)

DEFAULT_STATIC = Path(__file__).resolve().parents[1] / "client"


@dataclass
class ServerSettings:
    token: str | None = None
    static_dir: Path | None = DEFAULT_STATIC
    max_message_bytes: int = 1024 * 1024   # aiohttp closes the socket (1009) past this
    speech_threshold_dbfs: float = -45.0


def create_app(engines: dict[str, Engine], settings: ServerSettings | None = None) -> web.Application:
    """Builds the app around already-loaded engines; they are started and stopped with the app."""
    app = web.Application()
    app["engines"] = engines
    app["settings"] = settings or ServerSettings()
    app["metrics"] = ServerMetrics()
    for name, engine in engines.items():
        scheduler = getattr(engine, "scheduler", None)
        if scheduler is not None:
            scheduler.on_tick = app["metrics"].tick_observer(name)
    app.on_startup.append(_start_engines)
    app.on_shutdown.append(_close_sockets)
    app.on_cleanup.append(_stop_engines)
    app["sockets"] = set()
    app.router.add_get("/ws", handle_ws)
    app.router.add_get("/api/chat", _authorized(handle_chat))
    app.router.add_get("/health", handle_health)
    app.router.add_get("/metrics", handle_metrics)
    static_dir = app["settings"].static_dir
    if static_dir is not None and (static_dir / "index.html").exists():
        app.router.add_get("/", _index(static_dir))
        app.router.add_static("/", static_dir, show_index=False)
    return app


async def _start_engines(app: web.Application) -> None:
    for engine in app["engines"].values():
        await engine.start()


async def _close_sockets(app: web.Application) -> None:
    for ws in list(app["sockets"]):
        await ws.close(code=1001, message=b"server shutting down")


async def _stop_engines(app: web.Application) -> None:
    for engine in app["engines"].values():
        await engine.stop()


def _index(static_dir: Path):
    async def index(request: web.Request) -> web.FileResponse:
        return web.FileResponse(static_dir / "index.html")
    return index


def token_ok(request: web.Request) -> bool:
    expected = request.app["settings"].token
    if not expected:
        return True
    given = request.query.get("token", "")
    header = request.headers.get("Authorization", "")
    if header.startswith("Bearer "):
        given = header.removeprefix("Bearer ").strip()
    return hmac.compare_digest(given.encode(), expected.encode())


def _authorized(handler):
    async def wrapped(request: web.Request) -> web.StreamResponse:
        if not token_ok(request):
            raise web.HTTPUnauthorized(text="unauthorized: a valid ?token= or Authorization: Bearer is required")
        return await handler(request)
    return wrapped


async def handle_health(request: web.Request) -> web.Response:
    app = request.app
    metrics: ServerMetrics = app["metrics"]
    return web.json_response({
        "status": "ok",
        "engines": {name: engine.health() for name, engine in app["engines"].items()},
        "frames_in": metrics.frames_in_total,
        "frames_out": metrics.frames_out_total,
        "connections": len(app["sockets"]),
        "uptime_s": round(metrics.uptime_s(), 1),
    })


async def handle_metrics(request: web.Request) -> web.Response:
    metrics: ServerMetrics = request.app["metrics"]
    return web.Response(body=metrics.exposition(), headers={"Content-Type": metrics.content_type})


async def handle_ws(request: web.Request) -> web.StreamResponse:
    """One conversation socket (PROTOCOL.md). Refusals are sent as an `error` then a close, so
    browsers (which cannot read an HTTP status on a failed upgrade) can show the reason."""
    app = request.app
    settings: ServerSettings = app["settings"]
    ws = web.WebSocketResponse(max_msg_size=settings.max_message_bytes, heartbeat=30.0)
    await ws.prepare(request)
    mode = request.query.get("mode", "auto")
    codec = request.query.get("codec", "opus")
    refusal = None
    if not token_ok(request):
        refusal = ("unauthorized", "a valid token is required (?token= or Authorization: Bearer)")
    elif mode not in protocol.MODES:
        refusal = ("bad_message", f"mode must be one of {', '.join(protocol.MODES)}")
    elif codec not in protocol.CODECS:
        refusal = ("bad_message", f"codec must be one of {', '.join(protocol.CODECS)}")
    if refusal is not None:
        app["metrics"].error(refusal[0])
        await ws.send_str(protocol.error("", *refusal))
        await ws.close(code=1008, message=refusal[0].encode())
        return ws

    session = Session(app["engines"], codec, app["metrics"], default_mode=mode,
                      speech_threshold_dbfs=settings.speech_threshold_dbfs)
    app["sockets"].add(ws)
    app["metrics"].connections.labels("ws").inc()
    session.send_ready()
    sender = asyncio.create_task(_send_loop(ws, session))
    close_code, close_reason = None, b""
    try:
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                session.handle_text(msg.data)
            elif msg.type == WSMsgType.BINARY:
                session.handle_binary(msg.data)
            elif msg.type == WSMsgType.ERROR:
                log.info("session %s: socket error %s", session.id, ws.exception())
                break
            if sender.done():
                break
    except TooManyBadMessages as exc:
        close_code, close_reason = 1008, str(exc).encode()
    except Exception:
        log.exception("session %s: internal error", session.id)
        session.send_error("internal", "internal server error; the connection is closed")
        close_code, close_reason = 1011, b"internal error"
    finally:
        session.close()
        app["sockets"].discard(ws)
        app["metrics"].connections.labels("ws").dec()
    if sender.done() and not sender.cancelled() and isinstance(sender.exception(), SlowReader):
        close_code, close_reason = 1008, b"client too slow: stopped reading"
    if close_code is not None and not ws.closed:
        await _flush(sender, session)
        await ws.close(code=close_code, message=close_reason)
    sender.cancel()
    return ws


async def _flush(sender: asyncio.Task, session: Session, timeout: float = 1.0) -> None:
    """Gives the sender a moment to deliver the last messages (the error that explains a close)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while len(session.outbox) and not sender.done() and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.01)


async def _send_loop(ws: web.WebSocketResponse, session: Session) -> None:
    encoder = session.encoder
    while True:
        kind, payload = await session.outbox.get()
        if ws.closed:
            return
        if kind == "audio":
            data = encoder.encode(payload)
            if data:
                await ws.send_bytes(bytes([protocol.KIND_AUDIO]) + data)
        else:
            await ws.send_str(payload)

