"""One conversation over one transport through a lossy relay, as `scripts/bench_loss.py` runs it.

A transport (`LossTransport`) plays the user's audio at real-time pace through its relay and returns what
arrived of the assistant's audio as `playout.Piece`s, with the send time of each 80 ms input frame; the
figures (`playout.summary`) are then computed the same way for every transport.

`WebSocketRun`: the project's own `/ws` protocol (Ogg Opus, duplex mode: the server answers input frame k
with output frame k, so piece k sits at position k * 1,920) through `lossy_tcp.TcpRelay`, whose tap cuts
the server's bytes into messages (`wsframes`): the k-th audio message's send time is piece k's `sent`.
"""

from __future__ import annotations

import time
import typing as tp
from dataclasses import dataclass, field

import numpy as np
from yarl import URL

from ..audio import FRAME_SAMPLES, rms_dbfs
from ..protocol import KIND_AUDIO
from ..client import DuplexClient, FramePacer, ServerClosed, split_frames
from .latency import SILENT_DBFS
from .link import LinkModel, Relay, RelayStats
from .lossy_tcp import TcpRelay
from .playout import Piece
from .wsframes import MessageCutter


@dataclass
class RunResult:
    """What one run gives the figures."""

    pieces: list[Piece]                  # the assistant's audio as it arrived
    sent_at: list[float] | None          # time.monotonic() after sending input frame k, where output frame k
                                         # is known to answer it (None: not known, no turnaround)
    relay: RelayStats
    extra: dict[str, tp.Any] = field(default_factory=dict)   # per-transport counts (server-reported drops, ...)


class LossTransport(tp.Protocol):
    """One way of carrying the conversation; `run` plays `pcm` (float32 24 kHz) through a relay on `link`."""

    name: str

    async def run(self, http_url: str, pcm: np.ndarray, link: LinkModel, settle_s: float) -> RunResult: ...


def is_silent(pcm: np.ndarray) -> bool:
    return pcm.size == 0 or rms_dbfs(pcm) < SILENT_DBFS


class WebSocketRun:
    """`/ws`, duplex mode, Opus, through a TCP relay that stalls on loss."""

    name = "websocket"

    def __init__(self, token: str | None = None, seed: int = 1):
        self.token = token
        self.seed = seed

    async def run(self, http_url: str, pcm: np.ndarray, link: LinkModel, settle_s: float) -> RunResult:
        server = URL(http_url)
        cutter = MessageCutter()   # the server's messages, as they reach the relay: when each was sent

        def tap(direction: str, data: bytes, received: float, delivered: float | None) -> None:
            if direction == "down":
                cutter.feed(data, received)

        relay: Relay = await TcpRelay.start((server.host or "127.0.0.1", server.port or 80), link, tap=tap)
        try:
            host, port = relay.address
            client = await DuplexClient.connect(f"http://{host}:{port}", token=self.token, ready_timeout=60)
            async with client:
                await client.start(mode="duplex", config={"seed": self.seed})
                await client.wait_for("status", timeout=60)
                frames = split_frames(pcm)
                sent_at: list[float] = []
                pacer = FramePacer(start=time.monotonic())
                for k, frame in enumerate(frames):
                    await pacer.wait(k)
                    await client.send_audio(frame)
                    sent_at.append(time.monotonic())
                try:   # the last answers: over a stalled link they come late, not never
                    await client.wait_audio_frames(len(frames), timeout=settle_s + 10)
                except (TimeoutError, ServerClosed):
                    pass
                chunks = list(client.audio)
                metrics = client.events_of("metrics")
            sent = [at for opcode, first, at in cutter.messages if opcode == 0x2 and first == KIND_AUDIO]
            pieces = [Piece(c.seq * FRAME_SAMPLES, int(c.pcm.size), c.received_at, not is_silent(c.pcm),
                            sent[c.seq] if c.seq < len(sent) else None) for c in chunks]
            extra = {"frames_sent": len(frames), "frames_received": len(chunks),
                     "frames_dropped_by_server": metrics[-1].data.get("frames_dropped") if metrics else None}
            return RunResult(pieces, sent_at, relay.stats, extra)
        finally:
            await relay.close()

