"""The lossy link of `scripts/bench_loss.py`: one model of a lossy network path, used by two relays.

This kernel has no `netem` qdisc, so the link is a user-space relay on loopback between client and server
(`lossy_udp.UdpRelay` for WebRTC, `lossy_tcp.TcpRelay` for the WebSocket). Both apply the same model, per
packet and per direction: each packet is lost with probability `loss`, and each one that gets through
arrives `rtt_ms / 2` after it was sent. What a loss costs differs by transport, as on a real network:
- UDP (RTP, SCTP, DTLS, ICE): the datagram is simply gone; the receiver conceals or retransmits.
- TCP: the byte stream stops at the hole until the retransmission comes, one retransmission timeout
  later (`rto_ms`; Linux's RTO is SRTT + max(4 RTTVAR, 200 ms), so ~240 ms on a steady 40 ms path), and
  every byte behind it waits too (head-of-line blocking). A retransmission is lost with the same
  probability, and then the timeout doubles (exponential backoff). Fast retransmit (three duplicate
  ACKs, about one RTT) needs more segments in flight than a voice stream has, so it is not modelled.
A packet on TCP is one read of the relay cut into segments of at most `mss` bytes (an 80 ms Opus frame
written with TCP_NODELAY is one packet).
"""

from __future__ import annotations

import random
import typing as tp
from dataclasses import dataclass, field


@dataclass
class LinkModel:
    """Loss and delay of one path, with its own seeded random stream (one per relay direction)."""

    loss: float = 0.0        # probability that one packet is lost, 0..1
    rtt_ms: float = 40.0     # round trip; each direction adds half
    rto_ms: float = 240.0    # TCP's retransmission timeout (>= 200 ms on Linux)
    mss: int = 1400          # bytes per TCP segment
    seed: int = 0
    directions: tuple[str, ...] = ("up", "down")   # which directions lose packets (both delay)
    rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not 0.0 <= self.loss < 1.0:
            raise ValueError(f"loss must be in [0, 1), got {self.loss}")
        if self.rtt_ms < 0 or self.rto_ms < 0 or self.mss <= 0:
            raise ValueError("rtt_ms and rto_ms must be >= 0 and mss > 0")
        self.rng = random.Random(self.seed)

    @property
    def one_way_s(self) -> float:
        return self.rtt_ms / 2000.0

    def lost(self) -> bool:
        """Draws one packet's fate."""
        return self.loss > 0 and self.rng.random() < self.loss

    def retransmission_stall_s(self) -> float:
        """Extra time one TCP segment takes: 0 if it got through, else the timeouts until a copy does."""
        stall, rto = 0.0, self.rto_ms / 1000.0
        while self.lost():
            stall += rto
            rto *= 2
        return stall

    def fork(self, salt: int, direction: str | None = None) -> "LinkModel":
        """The same model with its own random stream, for one direction ("up": client to server, "down"),
        or another connection; lossless for a direction not in `directions`."""
        loss = self.loss if direction is None or direction in self.directions else 0.0
        return LinkModel(loss, self.rtt_ms, self.rto_ms, self.mss, seed=self.seed * 1_000_003 + salt,
                         directions=self.directions)


@dataclass
class RelayStats:
    """What one relay did, per direction ("up": client to server, "down": server to client)."""

    packets: dict[str, int] = field(default_factory=lambda: {"up": 0, "down": 0})
    lost: dict[str, int] = field(default_factory=lambda: {"up": 0, "down": 0})
    bytes: dict[str, int] = field(default_factory=lambda: {"up": 0, "down": 0})
    stall_ms: dict[str, float] = field(default_factory=lambda: {"up": 0.0, "down": 0.0})  # TCP only

    def as_dict(self) -> dict[str, tp.Any]:
        return {"packets": dict(self.packets), "lost": dict(self.lost), "bytes": dict(self.bytes),
                "stall_ms": {k: round(v, 1) for k, v in self.stall_ms.items()}}


class Relay(tp.Protocol):
    """A started relay: clients connect to `address`, it forwards to the server through the lossy model."""

    stats: RelayStats

    @property
    def address(self) -> tuple[str, int]: ...

    async def close(self) -> None: ...
