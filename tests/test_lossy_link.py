"""The lossy relays of `scripts/bench_loss.py` (`duplex/bench/link.py`, `lossy_tcp.py`, `lossy_udp.py`).

Real sockets on loopback. Counted, not timed: bytes intact and in order, drop rates within bounds over
many datagrams with a seed, the delay applied (a lower bound, which load cannot break).
"""

from __future__ import annotations

import asyncio
import random

import pytest

from duplex.bench.link import LinkModel
from duplex.bench.lossy_tcp import TcpRelay
from duplex.bench.lossy_udp import UdpRelay


def test_model_draws_are_seeded_and_stalls_are_backed_off_timeouts():
    a, b = LinkModel(loss=0.3, seed=7), LinkModel(loss=0.3, seed=7)
    assert [a.lost() for _ in range(200)] == [b.lost() for _ in range(200)]
    model = LinkModel(loss=0.3, rto_ms=200, seed=1)
    stalls = [model.retransmission_stall_s() for _ in range(20_000)]
    stalled = sum(1 for s in stalls if s > 0) / len(stalls)
    assert 0.28 < stalled < 0.32
    # one loss: one timeout; the retransmission lost too: 200 + 400; and so on
    assert {round(s, 6) for s in stalls} <= {0.0, 0.2, 0.6, 1.4, 3.0, 6.2, 12.6, 25.4}
    assert 0.6 in {round(s, 6) for s in stalls}
    assert LinkModel(loss=0.0).retransmission_stall_s() == 0.0
    with pytest.raises(ValueError):
        LinkModel(loss=1.0)


async def _echo_server() -> asyncio.Server:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    return await asyncio.start_server(echo, "127.0.0.1", 0)


async def test_tcp_relay_keeps_bytes_intact_and_in_order_through_losses():
    server = await _echo_server()
    relay = await TcpRelay.start(server.sockets[0].getsockname()[:2],
                                 LinkModel(loss=0.2, rtt_ms=2, rto_ms=5, seed=3))
    try:
        reader, writer = await asyncio.open_connection(*relay.address)
        rng = random.Random(0)
        payload = rng.randbytes(300_000)
        async def send() -> None:
            offset = 0
            while offset < len(payload):   # writes of varied size, as a WebSocket's messages are
                size = rng.choice([40, 300, 1400, 5000, 20_000])
                writer.write(payload[offset:offset + size])
                await writer.drain()
                offset += size
                await asyncio.sleep(0)
            writer.write_eof()
        sender = asyncio.create_task(send())
        received = await reader.read(-1)   # to the echo's end of stream
        await sender
        assert received == payload
        stats = relay.stats
        assert stats.bytes == {"up": len(payload), "down": len(payload)}
        for way in ("up", "down"):
            assert stats.packets[way] >= len(payload) // 1400   # cut into segments of <= 1,400 bytes
            assert stats.lost[way] > 0                          # and losses drawn (p = 0.2)
            assert stats.stall_ms[way] >= 5 * stats.lost[way]   # each a timeout of >= rto
        writer.close()
    finally:
        await relay.close()
        server.close()


async def test_tcp_relay_delays_each_direction_by_half_the_round_trip():
    server = await _echo_server()
    relay = await TcpRelay.start(server.sockets[0].getsockname()[:2], LinkModel(loss=0.0, rtt_ms=60))
    try:
        reader, writer = await asyncio.open_connection(*relay.address)
        loop = asyncio.get_running_loop()
        for _ in range(3):
            sent = loop.time()
            writer.write(b"ping")
            assert await reader.readexactly(4) == b"ping"
            assert loop.time() - sent >= 0.060   # up and down, 30 ms each (a lower bound: load only adds)
        assert relay.stats.lost == {"up": 0, "down": 0}
        writer.close()
    finally:
        await relay.close()
        server.close()


class _Endpoint(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.received: list[tuple[bytes, float]] = []
        self.changed = asyncio.Event()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        self.received.append((data, asyncio.get_running_loop().time()))
        self.changed.set()

    async def wait_count(self, n: int) -> None:
        while len(self.received) < n:
            self.changed.clear()
            await asyncio.wait_for(self.changed.wait(), 10)

    @property
    def address(self):
        return self.transport.get_extra_info("sockname")[:2]


async def _endpoint() -> _Endpoint:
    protocol = _Endpoint()
    await asyncio.get_running_loop().create_datagram_endpoint(lambda: protocol, local_addr=("127.0.0.1", 0))
    return protocol


async def test_udp_relay_drops_at_the_rate_and_delays_what_gets_through():
    loop = asyncio.get_running_loop()
    client, server = await _endpoint(), await _endpoint()
    relay = await UdpRelay.start(LinkModel(loss=0.05, rtt_ms=20, seed=11))
    relay.server = server.address
    try:
        sent_at: dict[bytes, float] = {}
        twin = LinkModel(loss=0.05, rtt_ms=20, seed=11).fork(0)   # the relay's draws, to know what to wait for
        through = 0
        for batch in range(40):      # 2,000 datagrams, in batches the socket buffers hold
            for i in range(50):
                data = f"{batch}:{i}".encode()
                sent_at[data] = loop.time()
                client.transport.sendto(data, relay.address)
                through += not twin.lost()
            await server.wait_count(through)
        stats = relay.stats
        assert stats.packets["up"] == 2000
        assert len(server.received) == 2000 - stats.lost["up"]   # what was not dropped, all of it
        assert 50 <= stats.lost["up"] <= 150                     # 5 % of 2,000 = 100, sd ~10
        order = [data for data, _ in server.received]
        assert order == sorted(order, key=lambda d: list(sent_at).index(d))   # a fixed delay keeps order
        assert all(arrived - sent_at[data] >= 0.010 for data, arrived in server.received)
        # the way back goes to the client the relay learnt from the first datagram, with its own draws
        twin = LinkModel(loss=0.05, rtt_ms=20, seed=11).fork(1)
        through = sum(1 for _ in range(20) if not twin.lost())
        for i in range(20):
            server.transport.sendto(b"back%d" % i, relay.server_facing)
        await client.wait_count(through)
        assert len(client.received) == through and all(d.startswith(b"back") for d, _ in client.received)
    finally:
        await relay.close()
        client.transport.close()
        server.transport.close()


def test_a_direction_left_out_loses_nothing():
    model = LinkModel(loss=0.5, seed=2, directions=("down",))
    up, down = model.fork(0, "up"), model.fork(1, "down")
    assert sum(up.lost() for _ in range(1000)) == 0
    assert 400 < sum(down.lost() for _ in range(1000)) < 600
    assert model.fork(3).loss == 0.5   # a connection's model, before its direction is chosen
