"""The WebRTC run of `scripts/bench_loss.py`: a Realtime call (`duplex.client.webrtc`) through a lossy UDP relay.

Routing: the client's `offer_filter`/`answer_filter` hooks replace the offer's ICE candidates with the relay's server-facing
socket and the answer's with its client-facing one (`sdp.route_through`), so each peer knows only the
relay and every datagram crosses it (`lossy_udp`).

Measuring: the relay's tap reads each RTP packet's clear header (`rtp.parse_rtp`). The assistant's audio
is the server's RTP stream as it reaches the client's socket: position from the RTP timestamp (48 kHz,
counted from the stream's first packet, at 24 kHz), arrival when the relay hands the datagram on, audible
from the packet's `ssrc-audio-level` (the server's track sends digital silence when it has nothing). That
is what a browser's jitter buffer (NetEq) is given; aiortc's own receiver would add its hold (its jitter
buffer waits up to 16 packets for a missing one), which this figure leaves out.
There is no per-frame turnaround: the server's track is paced by the wall clock, and which output frame
answers which input frame is not visible on the wire (the lateness and the gaps show what loss costs).
"""

from __future__ import annotations

import collections
import time
import typing as tp

import numpy as np

from ..audio import SAMPLE_RATE
from ..client import FramePacer, split_frames
from ..client.webrtc import RealtimeCallClient
from .latency import SILENT_DBFS
from .link import LinkModel
from .loss_runs import RunResult
from .lossy_udp import UdpRelay
from .playout import Piece
from .rtp import RtpHeader, audio_level_id, parse_rtp
from .sdp import first_candidate, route_through

RTP_RATE = 48000   # Opus's RTP clock


class _Capture:
    """The relay's tap: the RTP headers of each direction, with when each got in and out (None: lost)."""

    def __init__(self) -> None:
        self.level_id: int | None = None
        self.packets: dict[str, list[tuple[RtpHeader, float, float | None]]] = {"up": [], "down": []}

    def __call__(self, direction: str, data: bytes, received: float, delivered: float | None) -> None:
        header = parse_rtp(data, self.level_id)
        if header is not None:
            self.packets[direction].append((header, received, delivered))

    def audio(self, direction: str) -> list[tuple[RtpHeader, float, float | None]]:
        """The packets of the direction's audio stream (its most common SSRC)."""
        packets = self.packets[direction]
        if not packets:
            return []
        ssrc = collections.Counter(h.ssrc for h, _, _ in packets).most_common(1)[0][0]
        return [p for p in packets if p[0].ssrc == ssrc]


def rtp_pieces(packets: tp.Sequence[tuple[RtpHeader, float, float | None]]) -> list[Piece]:
    """The delivered packets as pieces of a 24 kHz stream (each 20 ms packet: 480 samples)."""
    if not packets:
        return []
    origin = packets[0][0].timestamp
    scale = SAMPLE_RATE / RTP_RATE
    pieces = []
    for header, received, delivered in packets:
        if delivered is None:
            continue
        position = int(((header.timestamp - origin) % 2**32) * scale)
        audible = header.level_dbov is None or -header.level_dbov >= SILENT_DBFS
        pieces.append(Piece(position, int(0.020 * SAMPLE_RATE), delivered, audible, sent=received))
    return pieces


class WebRtcRun:
    """`/v1/realtime/calls`, the duplex model, one Opus track each way, through a UDP relay that drops."""

    name = "webrtc"

    def __init__(self, token: str | None = None, seed: int = 1):
        self.token = token
        self.seed = seed

    async def run(self, http_url: str, pcm: np.ndarray, link: LinkModel, settle_s: float) -> RunResult:
        capture = _Capture()
        relay = await UdpRelay.start(link, tap=capture)

        def rewrite_offer(sdp: str) -> str:
            relay.client = first_candidate(sdp)   # where the server's first checks go, before the client's
            return route_through(sdp, relay.server_facing)

        def rewrite_answer(sdp: str) -> str:
            relay.server = first_candidate(sdp)
            capture.level_id = audio_level_id(sdp)    # the answer's extension ids are what the server sends
            return route_through(sdp, relay.address)

        try:
            client = await RealtimeCallClient.connect(http_url, token=self.token, model="duplex",
                                                      session={"model": "duplex"}, offer_filter=rewrite_offer,
                                                      answer_filter=rewrite_answer,
                                                      open_timeout=60)
            async with client:
                frames = split_frames(pcm)
                pacer = FramePacer(start=time.monotonic())
                for k, frame in enumerate(frames):
                    await pacer.wait(k)
                    await client.send_audio(frame)
                await pacer.wait(len(frames) + round(settle_s / 0.08))   # the last answers (silence meanwhile)
            down = capture.audio("down")
            up = capture.audio("up")
            extra = {"rtp_down": len(down), "rtp_down_lost": sum(1 for _, _, d in down if d is None),
                     "rtp_up": len(up), "rtp_up_lost": sum(1 for _, _, d in up if d is None),
                     "events": len(client.events)}
            return RunResult(rtp_pieces(down), None, relay.stats, extra)
        finally:
            await relay.close()
