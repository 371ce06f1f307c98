"""Latency of scripted conversations, measured on the client's clock from the audio itself.

A `LiveMic` plays speech (or silence) at real-time pace through the real Python client; each figure
(`FIGURES`, docs/bench.md) is read off when the assistant's audio arrives or goes quiet. For the cascade,
the server's own per-stage times of each turn (`CASCADE_STAGES`, from its `metrics` messages) are kept
as well: from the end of the user's turn decided to each stage, and each stage from the one before.
"""

from __future__ import annotations

import asyncio
import collections
import time
import typing as tp

import numpy as np

from ..audio import FRAME_S, FRAME_SAMPLES, SAMPLE_RATE, rms_dbfs
from ..client import AudioChunk, DuplexClient, ServerClosed
from ..protocol import CASCADE_STAGES
from ..stats import percentiles

SILENT_DBFS = -50.0   # a received frame below this is silence
FIGURES = ("response_latency_ms", "interrupt_latency_ms", "first_transcript_ms", "frame_turnaround_ms")


class LiveMic:
    """Sends 80 ms frames at real-time pace like a microphone: queued speech, else silence."""

    def __init__(self, client: DuplexClient):
        self.client = client
        self.queue: collections.deque[np.ndarray] = collections.deque()
        self.sent_at: list[float] = []
        self.voiced_end = 0.0            # send time of the last voiced sample so far
        self._idle = asyncio.Event()     # set while no queued speech is left to send
        self._idle.set()
        self.task = asyncio.create_task(self._run())

    def say(self, pcm: np.ndarray) -> float:
        """Queues speech; returns how long it lasts (s)."""
        n = -(-len(pcm) // FRAME_SAMPLES)
        padded = np.zeros(n * FRAME_SAMPLES, dtype=np.float32)
        padded[: len(pcm)] = pcm
        self.queue.extend(padded.reshape(n, FRAME_SAMPLES))
        if n:
            self._idle.clear()
        return n * FRAME_S

    async def _run(self) -> None:
        start = time.monotonic()
        while True:
            frame = self.queue.popleft() if self.queue else np.zeros(FRAME_SAMPLES, dtype=np.float32)
            if not self.queue:
                self._idle.set()
            await self.client.send_audio(frame)
            now = time.monotonic()
            self.sent_at.append(now)
            voiced = np.flatnonzero(np.abs(frame) > 0.01)
            if voiced.size:
                self.voiced_end = now + (voiced[-1] + 1) / SAMPLE_RATE
            await asyncio.sleep(max(0.0, start + len(self.sent_at) * FRAME_S - time.monotonic()))

    async def wait_idle(self) -> None:
        """Until every queued frame of speech has been sent."""
        await self._idle.wait()

    def close(self) -> None:
        self.task.cancel()


def loud(chunk) -> bool:
    return chunk.pcm.size > 0 and rms_dbfs(chunk.pcm) > SILENT_DBFS


async def arrived(client: DuplexClient, predicate: tp.Callable[[], bool], timeout: float) -> bool:
    """Whether `predicate` (over what the client has received) became true within `timeout`: checked as
    each message arrives (the client's own wait), not by polling."""
    try:
        await client.wait_until(lambda: True if predicate() else None, timeout)
        return True
    except (TimeoutError, ServerClosed):
        return False


def turn_stages(client: DuplexClient) -> list[dict[str, float]]:
    """Each spoken assistant turn's stage times (ms from the end of the user's turn decided), as the server
    measured them and sent them in the turn's `metrics` message."""
    turns = []
    for event in client.events_of("metrics"):
        stages = {name: event.data[f"{name}_ms"] for name in CASCADE_STAGES if event.data.get(f"{name}_ms") is not None}
        if stages:
            turns.append(stages)
    return turns


async def conversation(url: str, mode: str, script: list[np.ndarray], token: str | None,
                       delay_s: float = 0.0) -> dict[str, list]:
    """One scripted conversation, begun `delay_s` after the call; returns samples of each figure, the cascade's
    per-turn stages, and when it began (`started`, time.monotonic())."""
    samples: dict[str, list] = {name: [] for name in FIGURES}
    await asyncio.sleep(delay_s)
    samples["started"] = [time.monotonic()]
    async with await DuplexClient.connect(url, token=token) as client:
        await client.start(mode=mode, config={"seed": 1})
        status = await client.wait_for("status", timeout=30)
        if status.data.get("mode") != mode:
            raise RuntimeError(f"asked for {mode}, got {status.data}")
        mic = LiveMic(client)
        try:
            for turn, pcm in enumerate(script):
                mic.say(pcm)
                await mic.wait_idle()
                await asyncio.sleep(0.1)
                speech_end = mic.voiced_end
                def after(chunk: AudioChunk, end: float = speech_end) -> bool:
                    return chunk.received_at > end and loud(chunk)

                if await arrived(client, lambda: any(after(c) for c in client.audio), 30):  # noqa: B023 - awaited here
                    first = next(c for c in client.audio if after(c))
                    samples["response_latency_ms"].append((first.received_at - speech_end) * 1000)
                transcripts = [e for e in client.events if e.type.endswith("_transcript") and e.received_at > speech_end]
                if transcripts:
                    samples["first_transcript_ms"].append((transcripts[0].received_at - speech_end) * 1000)
                if turn == len(script) // 2:   # the middle turn: cut the assistant off
                    await asyncio.sleep(0.8)
                    samples["interrupt_latency_ms"] += await cut_off(client, mic, script[0], barge_in=False)
                elif mode == "cascade":
                    turns_over = turn + 1
                    await arrived(client, lambda: len(client.events_of("tts_end")) + len(client.events_of("tts_stop"))
                                     >= turns_over, 60)  # noqa: B023 - awaited here, in this iteration
                else:
                    await asyncio.sleep(1.5)
                await asyncio.sleep(0.8)
            if mode == "duplex":
                sent = mic.sent_at
                samples["frame_turnaround_ms"] = [(c.received_at - sent[c.seq]) * 1000
                                                  for c in client.audio[5:] if c.seq < len(sent)]
        finally:
            mic.close()
        await client.stop()
        await client.wait_for("stop_acknowledged", timeout=10)
        samples["stages"] = turn_stages(client)
        samples["gaps"] = [(e.data.get("audio_gaps", 0), e.data.get("audio_gap_ms", 0.0))
                           for e in client.events_of("metrics") if "audio_gaps" in e.data]
    return samples


async def cut_off(client: DuplexClient, mic: LiveMic, speech: np.ndarray, barge_in: bool) -> list[float]:
    """Interrupts now; returns [ms until the assistant's audio is silent on the client]."""
    if not any(loud(c) for c in client.audio[-3:]):
        return []  # nothing to cut
    sent = time.monotonic()
    if barge_in:
        mic.say(speech)
    else:
        await client.interrupt()
    await asyncio.sleep(1.0)
    # The client is silent once the last loud frame after the cut has arrived and it has heard
    # `tts_stop` (on which a player flushes its buffer, as the browser client does).
    loud_later = [c.received_at for c in client.audio if c.received_at > sent and loud(c)]
    stops = [e.received_at for e in client.events_of("tts_stop") if e.received_at > sent]
    end = max(loud_later[-1:] + stops[:1] + [sent])
    return [(end - sent) * 1000]


def distribution(values: list[float]) -> dict:
    figures: dict[str, float | None] = {"p50": None, "p90": None, "p99": None}
    figures.update(percentiles(values) or {})
    return {**figures, "n": len(values)}


def stage_figures(turns: list[dict[str, float]]) -> dict:
    """Per stage: `from_end_of_turn` (its time from the end of the user's turn decided) and `step` (from the
    stage before it; the first from the end of turn), each a distribution over the turns that reached it."""
    out = {}
    for i, name in enumerate(CASCADE_STAGES):
        before = CASCADE_STAGES[i - 1] if i else None
        at = [turn[name] for turn in turns if name in turn]
        steps = [turn[name] - (turn[before] if before else 0.0) for turn in turns
                 if name in turn and (before is None or before in turn)]
        out[name] = {"from_end_of_turn": distribution(at), "step": distribution(steps)}
    return out


def start_delays(sessions: int, spread_s: float) -> list[float]:
    """When each of `sessions` conversations begins (s after the first): evenly over `spread_s`, so that their
    turns end at different moments, as real users' do; 0 starts them together (every turn ends at once:
    the STT flushes, LLM prefills and TTS starts of all of them collide, the worst case)."""
    return [i * spread_s / sessions for i in range(sessions)]


async def run_load(url: str, mode: str, sessions: int, script: list[np.ndarray], token: str | None,
                   spread_s: float = 0.0) -> dict:
    results = await asyncio.gather(*(conversation(url, mode, script, token, delay)
                                     for delay in start_delays(sessions, spread_s)))
    merged = {name: [v for r in results for v in r[name]] for name in FIGURES}
    figures: dict[str, tp.Any] = {name: distribution(values) for name, values in merged.items()
                                if mode == "duplex" or name != "frame_turnaround_ms"}
    if mode == "cascade":
        figures["stages"] = stage_figures([turn for r in results for turn in r["stages"]])
        gaps = [gap for r in results for gap in r["gaps"]]
        figures["audio_gaps"] = {"turns": len(gaps), "gaps": sum(n for n, _ in gaps),
                                 "gap_ms": round(sum(ms for _, ms in gaps), 1)}
    first = min(r["started"][0] for r in results)
    figures["started_s"] = sorted(round(r["started"][0] - first, 3) for r in results)
    return figures
