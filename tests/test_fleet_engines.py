"""Admission by engine (issue 24 item 14; docs/deploy.md "Admission by engine"): real workers of both engines
behind the real HAProxy that `duplex serve --haproxy` starts; a conversation lands where its engine has a free slot.
"""

from __future__ import annotations

import asyncio
import signal
import sys

from duplex.client import DuplexClient

from .helpers import health, wait_until_health
from .test_fleet import Lines, haproxy_binary, spawn, upgrade


async def begin(url: str, mode: str) -> tuple[DuplexClient, str]:
    """A `/ws?mode=...` conversation through `url`: its first `status` (the engine it runs on) or `error` code."""
    client = await DuplexClient.connect(url, mode=mode, codec="pcm16")
    await client.start()
    event = await client.wait_until(lambda: next((e for e in client.events if e.type in ("status", "error")), None),
                                    20, "the answer to start")
    return client, event.data["mode"] if event.type == "status" else f"error {event.data['code']}"


async def test_a_conversation_is_admitted_where_its_engine_has_a_free_slot():
    """Issue 24 item 14: HAProxy counted a worker's duplex and cascade slots together (`maxconn` = their sum), so
    `mode=duplex` went to the worker with the fewest connections of any engine, and was refused there when that
    worker's duplex slot was busy, while another worker's was free. Each engine is its own backend now."""
    haproxy_binary()
    log: list[str] = []
    fleet = await spawn(sys.executable, "-m", "duplex", "serve", "--workers", "2", "--slots", "1", "--cascade-slots",
                        "2", "--haproxy", "--lb-queue-timeout-s", "0.5", "--port", "0", "--opus-workers", "0",
                        "--quiet-progress", "--static", "none")
    assert fleet.stdout is not None and fleet.stderr is not None
    out, _ = Lines("fleet", fleet.stdout, log), Lines("fleet!", fleet.stderr, log)
    everyone: list[DuplexClient] = []

    async def busy() -> list[tuple[int, int]]:   # (duplex, cascade) conversations of each worker
        engines = [(await health(workers[i]))["engines"] for i in (0, 1)]
        return [(e["duplex"]["active"], e["cascade"]["active"]) for e in engines]

    try:
        url = (await out.expect(lambda t: t.startswith("DUPLEX_READY "), "fleet ready", timeout=180)).split()[1]
        workers = {int(w[1]): w[2] for w in (t.split() for t in out.seen if t.startswith("DUPLEX_WORKER "))}
        client, engine = await begin(url, "duplex")
        everyone.append(client)
        assert engine == "duplex"
        a = next(i for i, load in enumerate(await busy()) if load[0] == 1)   # worker A: its duplex slot is busy
        b = 1 - a
        # worker B: both cascade slots busy, its duplex slot free. Cascade conversations are opened until B has
        # two (all kept meanwhile, so the balancer must send them to B in the end), then those on A are closed.
        on_a: list[DuplexClient] = []
        for _ in range(8):
            if (await busy())[b][1] == 2:
                break
            before = await busy()
            client, engine = await begin(url, "cascade")
            everyone.append(client)
            if (await busy())[a][1] > before[a][1]:
                on_a.append(client)
        for client in on_a:
            await client.close()
        await wait_until_health(workers[a], lambda s: s["engines"]["cascade"]["active"] == 0, "A's cascade free")
        assert await busy() == [(1, 0), (0, 2)][:: 1 if a == 0 else -1]

        # A has 1 connection, B 2: a balancer counting both engines together sends this one to A (its duplex busy)
        client, engine = await begin(url, "duplex")
        everyone.append(client)
        assert engine == "duplex", f"mode=duplex was not served ({engine}): it was sent to worker A, whose duplex " \
                                   "slot is busy, while worker B's was free"
        assert (await busy())[b] == (1, 2)

        # mode=auto: no duplex slot free in the fleet, so cascade (on A, the only worker with one free)
        client, engine = await begin(url, "auto")
        await client.close()
        assert engine == "cascade"
        await wait_until_health(workers[a], lambda s: s["engines"]["cascade"]["active"] == 0, "A's cascade free")

        # A socket counted against A's duplex slot before it starts (`/ws?mode=duplex`, no `start` yet): HAProxy
        # sends the next `auto` to A's cascade backend, and A, told so (X-Duplex-Engine), takes cascade for it,
        # not the duplex slot that is free for a moment: the waiting socket's `start` is then served on A
        await everyone[0].close()
        await wait_until_health(workers[a], lambda s: s["engines"]["duplex"]["active"] == 0, "A's duplex free")
        waiting = await DuplexClient.connect(url, mode="duplex", codec="pcm16")
        everyone.append(waiting)
        client, engine = await begin(url, "auto")
        everyone.append(client)
        assert engine == "cascade" and await busy() == [(0, 1), (1, 2)][:: 1 if a == 0 else -1]
        await waiting.start()
        await waiting.wait_for("status", timeout=20)
        assert (await busy())[a] == (1, 1)

        # every duplex slot busy: an explicit duplex conversation on any path waits the queue timeout, then 503
        for path in ("/ws?mode=duplex", "/api/chat", "/v1/realtime?model=duplex"):
            assert await upgrade(url + path) == (503, "capacity"), path
        client, engine = await begin(url, "cascade")   # cascade is still served (A's last cascade slot)
        everyone.append(client)
        assert engine == "cascade"
        # and every slot of both engines busy: auto and cascade are refused the same way
        for path in ("/ws", "/ws?mode=cascade", "/v1/realtime?model=auto"):
            assert await upgrade(url + path) == (503, "capacity"), path
    finally:
        for c in everyone:
            await c.close()
        if fleet.returncode is None:
            fleet.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(fleet.wait(), 30)
            except asyncio.TimeoutError:
                fleet.kill()
                await fleet.wait()
