"""A UDP relay between one WebRTC client and the server that drops and delays datagrams (model: `link.py`).

Two sockets: `client_side` is what the client is told is the server (the answer's ICE candidate is
rewritten to it, `sdp.py`), `server_side` is what the server is told is the client (the offer's candidate).
Each side knows only the relay, so every datagram (ICE checks, DTLS, SCTP, RTP and RTCP) crosses it and
neither peer can find a direct path around it (a peer-reflexive candidate would need a datagram from the
other's real address, which never comes). Each datagram is dropped with the loss rate, else sent on
`rtt_ms / 2` later.
"""

from __future__ import annotations

import asyncio
import typing as tp

from .link import LinkModel, RelayStats

Address = tuple[str, int]
# tap(direction, datagram, received, delivered): each datagram the relay got, when (loop.time()), and
# when it is handed on (None: lost); "up" is client -> server
Tap = tp.Callable[[str, bytes, float, "float | None"], None]


class _Side(asyncio.DatagramProtocol):
    """One socket of the relay; hands what it receives to the relay."""

    def __init__(self, on_datagram: tp.Callable[[bytes, Address], None]):
        self.on_datagram = on_datagram
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = tp.cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | tp.Any, int]) -> None:
        self.on_datagram(data, (str(addr[0]), int(addr[1])))


class UdpRelay:
    """`await UdpRelay.start(model, host)`; then `connect_server(addr)`, and the client's address is learnt
    from its first datagram (or set with `client`, for the server's checks that come first)."""

    def __init__(self, model: LinkModel, tap: Tap | None = None):
        self.tap = tap
        self.up = model.fork(0, "up")        # client -> server
        self.down = model.fork(1, "down")    # server -> client
        self.stats = RelayStats()
        self.server: Address | None = None
        self.client: Address | None = None
        self._client_side = _Side(self._from_client)
        self._server_side = _Side(self._from_server)
        self._timers: set[asyncio.TimerHandle] = set()

    @classmethod
    async def start(cls, model: LinkModel, host: str = "127.0.0.1", tap: Tap | None = None) -> "UdpRelay":
        relay = cls(model, tap)
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: relay._client_side, local_addr=(host, 0))
        await loop.create_datagram_endpoint(lambda: relay._server_side, local_addr=(host, 0))
        return relay

    @property
    def address(self) -> Address:
        """Where the client sends: put in the answer in place of the server's candidate."""
        return self._bound(self._client_side)

    @property
    def server_facing(self) -> Address:
        """Where the server sends: put in the offer in place of the client's candidate."""
        return self._bound(self._server_side)

    @staticmethod
    def _bound(side: _Side) -> Address:
        assert side.transport is not None, "start() the relay first"
        host, port = side.transport.get_extra_info("sockname")[:2]
        return str(host), int(port)

    def _from_client(self, data: bytes, addr: Address) -> None:
        self.client = addr
        if self.server is not None:
            self._forward(data, self._server_side, self.server, self.up, "up")

    def _from_server(self, data: bytes, addr: Address) -> None:
        if self.client is not None:
            self._forward(data, self._client_side, self.client, self.down, "down")

    def _forward(self, data: bytes, side: _Side, to: Address, model: LinkModel, name: str) -> None:
        self.stats.packets[name] += 1
        self.stats.bytes[name] += len(data)
        loop = asyncio.get_running_loop()
        if model.lost():
            self.stats.lost[name] += 1
            if self.tap is not None:
                self.tap(name, data, loop.time(), None)
            return
        if self.tap is not None:
            self.tap(name, data, loop.time(), loop.time() + model.one_way_s)
        timer: asyncio.TimerHandle | None = None

        def send() -> None:
            self._timers.discard(tp.cast(asyncio.TimerHandle, timer))
            if side.transport is not None and not side.transport.is_closing():
                side.transport.sendto(data, to)

        timer = loop.call_later(model.one_way_s, send)
        self._timers.add(timer)

    async def close(self) -> None:
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        for side in (self._client_side, self._server_side):
            if side.transport is not None:
                side.transport.close()
