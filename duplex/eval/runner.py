"""Plays a scenario through the real Python client at real-time pace and records what the user would hear.

The timeline: a microphone sends an 80 ms frame once it has captured it, so input frame k, which holds
the scenario's audio up to (k + 1) * 80 ms, is sent at t0 + k * 80 ms (the client's `FramePacer`), and
the scenario's time 0 is t0 - 80 ms on the client's clock. Each returned audio chunk is placed at its
arrival time on that same clock (after the previous one if that one is still playing, as a player
would), in both modes, so a latency read off the recording includes everything a user waits for: the
model, the network and the codec.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import numpy as np

from ..audio import FRAME_S, SAMPLE_RATE
from ..client import DuplexClient, FramePacer, align_assistant_audio, split_frames
from .wire import on_audio_clock, uplink

CLOCKS = ("arrival", "audio")


class ScenarioRunError(RuntimeError):
    """The server would not run a scenario (refused the mode, reported an error, closed the socket)."""


@dataclass
class Played:
    """One scenario played once: the recording on the scenario's timeline and what the server said."""

    output: np.ndarray                  # float32 24 kHz, len = input + tail, sample i = scenario time i / 24000
    frames_sent: int
    chunks_received: int
    errors: list[dict] = field(default_factory=list)   # `error` events, in order


async def play(url: str, mode: str, pcm: np.ndarray, *, tail_s: float = 0.0, token: str | None = None,
               config: dict | None = None, start_timeout_s: float = 30.0, codec: str = "opus",
               clock: str = "arrival") -> Played:
    """Connects, starts a conversation in `mode`, sends `pcm` then `tail_s` of silence in real time, stops.

    `clock`: where the returned audio goes on the scenario's timeline. `arrival` (what a user hears):
    each chunk at its arrival time. `audio` (duplex only): the chunks end to end from 80 ms on, output
    frame k where input frame k was complete, i.e. with a zero turnaround; what `duplex eval --offline`
    records, so the two can be compared sample for sample."""
    if clock not in CLOCKS or (clock == "audio" and mode != "duplex"):
        raise ValueError(f"clock {clock!r}: arrival, or audio for the duplex mode (the cascade speaks when it decides to)")
    total = np.concatenate([np.asarray(pcm, dtype=np.float32), np.zeros(int(round(tail_s * SAMPLE_RATE)), np.float32)])
    frames = split_frames(total)
    async with await DuplexClient.connect(url, token=token, codec=codec) as client:
        await client.start(mode=mode, config=config)
        status = await client.wait_until(_started(client), timeout=start_timeout_s, what=f"the {mode} conversation to start")
        if status.type == "error" or status.data.get("mode") != mode:
            raise ScenarioRunError(f"the server did not start a {mode} conversation: {status.data}")
        pacer = FramePacer(start=time.monotonic())
        for k, frame in enumerate(frames):
            await pacer.wait(k)
            await client.send_audio(frame)
        # what is still on its way for the last frames: duplex sends one frame per input frame; the cascade
        # is heard until the end of the window
        if clock == "audio":   # every frame the model will answer, however late (the server's decoder, replayed)
            expected = len(uplink(total, codec))
            while client.binary_messages < expected:      # a server behind real time catches up: wait while it does
                before = client.binary_messages
                try:
                    await client.wait_audio_frames(expected, timeout=30.0)
                except TimeoutError:
                    if client.binary_messages == before:
                        raise ScenarioRunError(
                            f"the server sent {before} of the {expected} audio frames its model answers, none for 30 s "
                            "(a server far behind real time drops the oldest input frames past --max-queue-frames)"
                        ) from None
        elif mode == "duplex":
            try:
                await client.wait_audio_frames(len(frames), timeout=2.0)
            except TimeoutError:
                pass
        else:
            await asyncio.sleep(max(0.0, pacer.due(len(frames)) - time.monotonic()))
        received = list(client.audio)
        await client.stop()
        try:
            await client.wait_for("stop_acknowledged", timeout=10.0)
        except TimeoutError:
            pass
    if clock == "audio":
        output = on_audio_clock(align_assistant_audio(received, by_arrival=False), total.size)
    else:
        output = align_assistant_audio(received, by_arrival=True, stream_start=pacer.start - FRAME_S,
                                       min_samples=total.size)[:total.size]
    return Played(output=output, frames_sent=len(frames), chunks_received=len(received),
                  errors=[e.data for e in client.events_of("error")])


def _started(client: DuplexClient):
    """The first `status` (the conversation started) or `error` (it did not) event."""
    def check():
        return next((e for e in client.events if e.type in ("status", "error")), None)
    return check
