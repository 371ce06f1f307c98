"""What a balancer and an autoscaler read from one worker (server/capacity.py), in-process around the fake engine:
free slots in /health, /ready turning 503 when every slot is busy, the capacity gauges, and the SIGTERM drain.
"""

from __future__ import annotations

import asyncio

from aiohttp import WSMsgType

from duplex.server import capacity

from .test_server_inprocess import FakeEngine, TIMEOUT, metric, open_started, receive_json, serving


async def test_ready_turns_503_when_every_slot_is_busy_and_back_when_one_frees():
    async with serving(FakeEngine("duplex", slots=2)) as client:
        ready = await client.get("/ready")
        assert ready.status == 200 and (await ready.json())["free"] == {"duplex": 2}
        first = await open_started(client)
        second = await open_started(client)
        ready = await client.get("/ready")
        body = await ready.json()
        assert ready.status == 503 and body["ready"] is False and "every slot" in body["reason"]
        health = await (await client.get("/health")).json()
        assert health["engines"]["duplex"]["free"] == 0 and health["status"] == "ok"
        assert await metric(client, "duplex_engine_slots_free", '{engine="duplex"}') == 0
        assert await metric(client, "duplex_engine_utilization", '{engine="duplex"}') == 1
        assert await metric(client, "duplex_ready") == 0
        await second.send_json({"type": "stop"})
        while (await receive_json(second))["type"] != "status":
            pass
        ready = await client.get("/ready")
        assert ready.status == 200 and (await ready.json())["free"] == {"duplex": 1}
        assert await metric(client, "duplex_ready") == 1
        await first.close()
        await second.close()


async def test_ready_counts_the_connection_cap():
    async with serving(FakeEngine("duplex", slots=4), max_connections=1) as client:
        ws = await client.ws_connect("/ws?codec=pcm16")   # open, no conversation yet: a connection all the same
        assert (await receive_json(ws))["type"] == "ready"
        ready = await client.get("/ready")
        assert ready.status == 503 and "connection cap" in (await ready.json())["reason"]
        await ws.close()


async def test_a_drain_refuses_new_conversations_and_ends_when_the_last_socket_closes():
    async with serving(FakeEngine("duplex", slots=2)) as client:
        ws = await open_started(client)
        drain = asyncio.create_task(capacity.drain(client.app, timeout_s=10))
        await asyncio.sleep(0)   # the drain has begun (no await before `begin`)
        health = await client.get("/health")
        assert health.status == 503 and (await health.json())["status"] == "draining"
        assert (await client.get("/ready")).status == 503
        refused = await client.ws_connect("/ws?codec=pcm16")
        error = await receive_json(refused)
        assert error["type"] == "error" and error["code"] == "capacity"
        close = await refused.receive(timeout=TIMEOUT)
        assert close.type == WSMsgType.CLOSE and close.data == 1013
        assert not drain.done()   # the running conversation is not cut
        await ws.send_bytes(b"\x01" + bytes(3840))
        assert (await ws.receive(timeout=TIMEOUT)).type == WSMsgType.BINARY
        await ws.close()
        async with asyncio.timeout(TIMEOUT):
            await drain   # returns once the last conversation socket has left


async def test_a_drain_gives_up_at_its_limit():
    async with serving(FakeEngine("duplex", slots=2)) as client:
        ws = await open_started(client)
        assert await client.app[capacity.DRAIN].wait(0.01) is False
        await capacity.drain(client.app, timeout_s=0.05)   # logs and returns: the caller closes the rest (1001)
        assert not ws.closed
        await ws.close()


async def test_auto_takes_the_engine_the_balancer_counted_the_socket_against_first():
    """Issue 24 item 14: HAProxy's engine backends say which engine's count a socket is in (X-Duplex-Engine);
    `auto` takes that engine first (else the other, as before); a header naming no engine here changes nothing."""
    async with serving(FakeEngine("duplex", slots=2), FakeEngine("cascade", slots=1)) as client:
        async def auto(header: str | None) -> str:
            headers = {capacity.ENGINE_HEADER: header} if header is not None else {}
            ws = await client.ws_connect("/ws?codec=pcm16&mode=auto", headers=headers)
            sockets.append(ws)
            assert (await receive_json(ws))["type"] == "ready"
            await ws.send_json({"type": "start"})
            return (await receive_json(ws))["mode"]

        sockets: list = []
        assert await auto("cascade") == "cascade"
        assert await auto("cascade") == "duplex"   # its cascade slot is taken: auto's other engine, as ever
        assert await auto("bogus") == "duplex"
        for ws in sockets:
            await ws.close()
