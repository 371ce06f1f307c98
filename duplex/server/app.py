"""The aiohttp application: an app factory, routes, auth, `/health` and `/metrics`; engines started and stopped with it.

The conversation sockets have their own modules: `/ws` in `ws_endpoint`, `/api/chat` in `moshi_compat`.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from ..engines.base import Engine
from .auth import require_token
from .metrics import ServerMetrics
from .moshi_compat import handle_chat
from .settings import ServerSettings
from .ws_endpoint import handle_ws


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
    app.router.add_get("/api/chat", require_token(handle_chat))
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
