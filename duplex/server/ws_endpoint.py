"""`/ws`: one conversation socket speaking the duplex protocol (docs/protocol.md).

The handler only moves bytes: text and binary messages go to the connection's `Session`, whose
`Outbox` a send loop drains (encoding audio at send time). Refusals are sent as an `error` then a
close, so browsers (which cannot read an HTTP status on a failed upgrade) can show the reason.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import WSMsgType, web

from .. import protocol
from .auth import token_ok
from .outbox import SlowReader
from .session import Session, TooManyBadMessages
from .settings import ServerSettings

log = logging.getLogger(__name__)


async def handle_ws(request: web.Request) -> web.StreamResponse:
    """One conversation socket: refusals first (token, mode, codec), then the session's message loop."""
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

