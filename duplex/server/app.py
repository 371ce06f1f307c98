"""The aiohttp application: an app factory, routes, auth, `/health` and `/metrics`; engines started and stopped with it.

The app's state lives under typed keys (`state.py`). Each engine is a `cleanup_ctx` resource: started
before the server accepts connections, stopped after it has closed them, in reverse order. The
conversation sockets have their own codecs in `protocols/` (`/ws`, `/api/chat`, `/v1/realtime`), all run
by the one connection lifecycle in `connection`; `recording/` keeps conversations (`--record DIR`).
"""

from __future__ import annotations

import contextlib
import typing as tp
from pathlib import Path

from aiohttp import web

from ..engines.base import Engine
from . import capacity
from .auth import require_token
from .config_http import handle_config
from .metrics import ServerMetrics
from .opus_pool import OpusPool
from .protocols import handle_chat, handle_realtime, handle_ws
from .recording import RecordingStore, add_recording_routes
from .settings import ServerSettings
from .protocols.webrtc import add_webrtc_routes
from .state import ENGINES, METRICS, OPUS_POOL, RECORDINGS, SETTINGS, SOCKETS, OpenConversation


def create_app(engines: dict[str, Engine], settings: ServerSettings | None = None,
               recordings: RecordingStore | None = None) -> web.Application:
    """Builds the app around already-loaded engines; they are started and stopped with the app.
    With `recordings` (`--record DIR`), conversations are kept and listed at /recordings."""
    app = web.Application()
    app[ENGINES] = engines
    app[SETTINGS] = settings or ServerSettings()
    app[METRICS] = ServerMetrics()
    app[SOCKETS] = set()
    if app[SETTINGS].opus_workers > 0:
        app[OPUS_POOL] = OpusPool(app[SETTINGS].opus_workers)
        app.cleanup_ctx.append(_running(app[OPUS_POOL]))
    for name, engine in engines.items():
        scheduler = getattr(engine, "scheduler", None)
        if scheduler is not None:
            scheduler.on_tick = app[METRICS].tick_observer(name)
        app.cleanup_ctx.append(_running(engine))
    if recordings is not None:   # registered last: stopped first, once the sockets are closed, before the engines
        app[RECORDINGS] = recordings
        recordings.register_metrics(app[METRICS].registry)
        app.cleanup_ctx.append(_running(recordings))
        add_recording_routes(app, recordings, require_token)
    # shutdown runs before cleanup: sockets go before engines stop. The ignore answers a typing mismatch
    # between aiohttp 3.x (Signal[Callable]) and aiosignal 1.4 (variadic Signal); warn_unused_ignores
    # flags it once a release agrees with itself.
    app.on_shutdown.append(_close_sockets)  # type: ignore[arg-type]
    app.router.add_get("/ws", handle_ws)
    app.router.add_get("/api/chat", require_token(handle_chat))
    app.router.add_get("/v1/realtime", handle_realtime)   # OpenAI Realtime API (docs/realtime.md)
    add_webrtc_routes(app)   # its WebRTC calls: POST /v1/realtime/client_secrets, /v1/realtime/calls (docs/webrtc.md)
    app.router.add_get("/health", handle_health)
    app.router.add_get("/config", handle_config)   # the config keys and voices a client may set (the page's form)
    app.router.add_get("/metrics", handle_metrics)
    capacity.install(app)   # /ready, free slots in /metrics, the SIGTERM drain (docs/deploy.md)
    static_dir = app[SETTINGS].static_dir
    if static_dir is not None and (static_dir / "index.html").exists():
        app.router.add_get("/", _index(static_dir))
        app.router.add_static("/", static_dir, show_index=False)
    return app


class _Startable(tp.Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...


def _running(resource: _Startable) -> tp.Callable[[web.Application], tp.AsyncIterator[None]]:
    """A cleanup_ctx entry: started with the app, stopped at cleanup (in reverse order of registration)."""
    async def running(app: web.Application) -> tp.AsyncIterator[None]:
        await resource.start()
        yield
        await resource.stop()
    return running


async def _close_sockets(app: web.Application) -> None:
    sockets: set[OpenConversation] = app[SOCKETS]
    for ws in list(sockets):
        with contextlib.suppress(RuntimeError):   # admitted but its upgrade not done yet: it has no writer
            await ws.close(code=1001, message=b"server shutting down")


def _index(static_dir: Path):
    async def index(request: web.Request) -> web.FileResponse:
        return web.FileResponse(static_dir / "index.html")
    return index


async def handle_health(request: web.Request) -> web.Response:
    app = request.app
    metrics = app[METRICS]
    draining = capacity.draining(app)
    return web.json_response(status=503 if draining else 200, data={
        "status": "draining" if draining else "ok",
        "engines": {name: capacity.engine_capacity(engine) for name, engine in app[ENGINES].items()},
        "frames_in": metrics.frames_in_total,
        "frames_out": metrics.frames_out_total,
        "connections": len(app[SOCKETS]),
        **metrics.cpu_s(),  # loop_cpu_s, process_cpu_s, model_threads_cpu_s (CPU seconds so far)
        "uptime_s": round(metrics.uptime_s(), 1),
    })


async def handle_metrics(request: web.Request) -> web.Response:
    metrics = request.app[METRICS]
    duplex = request.app[ENGINES].get("duplex")
    if duplex is not None and "prefix_cache" in (health := duplex.health()):
        metrics.persona_cache(health["prefix_cache"])
    return web.Response(body=metrics.exposition(), headers={"Content-Type": metrics.content_type})
