"""What a load balancer and an autoscaler read from one worker: free slots, readiness, draining.

A conversation holds a slot of one engine from `start` to `stop` (or the socket's close). A balancer in
front of several workers (HAProxy, docs/deploy.md) counts connections; this module gives it and
Kubernetes the worker's side of the story:

- `/health` adds `free` to each engine's numbers, and answers 503 `draining` once SIGTERM has started a
  drain (HAProxy's health check then stops routing new conversations here; running ones go on);
- `/ready` answers 200 while a new conversation would be served (some engine has a free slot, the
  connection cap is not reached, no drain), else 503 with the reason: Kubernetes readiness;
- `/metrics` gains `duplex_engine_slots{engine}`, `duplex_engine_slots_free{engine}`,
  `duplex_engine_utilization{engine}` (busy share, for an autoscaler) and `duplex_ready`;
- `Drain`: on SIGTERM with `--drain-s`, new conversation sockets are refused (`capacity`) and the
  server waits, up to the limit, for the open ones to end before it closes the rest (1001);
- `admitted_engine`: behind HAProxy (one backend per engine), the engine whose backend counted this
  socket; a conversation with `mode=auto` takes that engine first, so the balancer's counts stay right.
"""

from __future__ import annotations

import asyncio
import logging
import typing as tp

from aiohttp import web
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from ..engines.base import Engine
from .state import ENGINES, METRICS, SETTINGS, SOCKETS

log = logging.getLogger(__name__)


class Drain:
    """A worker's drain: once begun, no new conversation sockets; `wait` ends when the last one closes."""

    def __init__(self) -> None:
        self.draining = False
        self._idle = asyncio.Event()

    def begin(self, open_sockets: int) -> None:
        self.draining = True
        if open_sockets == 0:
            self._idle.set()

    def socket_closed(self, open_sockets: int) -> None:
        """Called by the connection lifecycle each time a conversation socket leaves the app's set."""
        if self.draining and open_sockets == 0:
            self._idle.set()

    async def wait(self, timeout_s: float) -> bool:
        """True when every conversation socket closed within `timeout_s`."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except asyncio.TimeoutError:
            return False
        return True


DRAIN = web.AppKey("drain", Drain)
ENGINE_HEADER = "X-Duplex-Engine"   # set by HAProxy's engine backends (`duplex lb-config`); a client's is replaced


def admitted_engine(request: web.Request) -> str:
    """The engine `auto` takes first on this socket: the one the balancer counted it against, else duplex."""
    engine = request.headers.get(ENGINE_HEADER, "")
    return engine if engine in request.app[ENGINES] else "duplex"


def install(app: web.Application) -> None:
    """Adds `/ready`, the drain state and the capacity gauges to an app (called by the app factory)."""
    app[DRAIN] = Drain()
    app.router.add_get("/ready", handle_ready)
    app[METRICS].registry.register(CapacityCollector(app))


def draining(app: web.Application) -> bool:
    drain = app.get(DRAIN)
    return drain is not None and drain.draining


def socket_closed(app: web.Application) -> None:
    drain = app.get(DRAIN)
    if drain is not None:
        drain.socket_closed(len(app[SOCKETS]))


async def drain(app: web.Application, timeout_s: float) -> None:
    """SIGTERM with `--drain-s`: stop taking conversations, wait for the open ones (at most `timeout_s`)."""
    sockets = app[SOCKETS]
    app[DRAIN].begin(len(sockets))
    if not sockets:
        return
    log.info("draining: %d conversation socket(s) open; waiting up to %g s for them to end "
             "(SIGTERM again to stop now)", len(sockets), timeout_s)
    if await app[DRAIN].wait(timeout_s):
        log.info("drained: every conversation ended")
    else:
        log.info("drain time is up: closing %d socket(s) that are still open", len(sockets))


def engine_capacity(engine: Engine) -> dict:
    """The engine's /health numbers plus `free` (slots a new conversation could take now)."""
    health = engine.health()
    if "slots" in health and "active" in health:
        health["free"] = max(0, int(health["slots"]) - int(health["active"]))
    return health


def readiness(app: web.Application) -> tuple[bool, dict]:
    """Whether a new conversation would be served here now, and why not."""
    engines: dict[str, Engine] = app[ENGINES]
    free = {name: max(0, int(h.get("slots", 0)) - int(h.get("active", 0)))
            for name, h in ((n, e.health()) for n, e in engines.items())}
    cap = app[SETTINGS].max_connections
    connections = len(app[SOCKETS])
    reason = None
    if draining(app):
        reason = "draining: the server is shutting down"
    elif cap and connections >= cap:
        reason = f"connection cap reached ({connections} of {cap})"
    elif not any(free.values()):
        reason = "every slot of every engine is busy"
    body: dict[str, tp.Any] = {"ready": reason is None, "free": free, "connections": connections,
                               "max_connections": cap}
    if reason is not None:
        body["reason"] = reason
    return reason is None, body


async def handle_ready(request: web.Request) -> web.Response:
    ready, body = readiness(request.app)
    return web.json_response(body, status=200 if ready else 503)


class CapacityCollector(Collector):
    """Slots and readiness read from the engines at scrape time (no bookkeeping on the frame path)."""

    def __init__(self, app: web.Application):
        self.app = app

    def collect(self) -> tp.Iterator[GaugeMetricFamily]:
        slots = GaugeMetricFamily("duplex_engine_slots", "Conversation slots of each engine", labels=["engine"])
        free = GaugeMetricFamily("duplex_engine_slots_free", "Slots free for a new conversation",
                                 labels=["engine"])
        used = GaugeMetricFamily("duplex_engine_utilization", "Share of the engine's slots in use (0-1): "
                                 "what an autoscaler targets", labels=["engine"])
        for name, engine in self.app[ENGINES].items():
            health = engine_capacity(engine)
            slots.add_metric([name], float(health.get("slots", 0)))
            free.add_metric([name], float(health.get("free", 0)))
            if health.get("slots"):
                used.add_metric([name], 1.0 - float(health.get("free", 0)) / float(health["slots"]))
        ready = GaugeMetricFamily("duplex_ready", "1 while a new conversation would be served here (see /ready)")
        ready.add_metric([], 1.0 if readiness(self.app)[0] else 0.0)
        yield slots
        yield free
        yield used
        yield ready


async def drain_then_stop(app: web.Application, timeout_s: float, stop: asyncio.Event) -> None:
    """After the first SIGTERM: drain for at most `timeout_s`; a second signal (`stop` set again) cuts it short."""
    stop.clear()
    drained = asyncio.create_task(drain(app, timeout_s))
    again = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({drained, again}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (drained, again):
            task.cancel()
        await asyncio.gather(drained, again, return_exceptions=True)
