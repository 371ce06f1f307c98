"""`duplex client --transport webrtc`: one conversation as a WebRTC call (OpenAI's Realtime flow, docs/webrtc.md).

The same inputs and outputs as over the WebSocket (a WAV file, the microphone or `--text`; transcripts as
they come; `--output` the assistant's audio on the input's timeline; the summary), through
`webrtc.RealtimeCallClient`: client secret -> call -> events on `oai-events` -> audio both ways on the track.
The conversation config flags become the Realtime session the secret carries (`--system-prompt` ->
`instructions`, `--voice` -> `audio.output.voice`, `--transcribe-user` -> `audio.input.transcription`); the
Realtime API has no field for the sampling flags, so they are not sent (a note says so).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import typing as tp

import aiohttp
import numpy as np

from ..audio import FRAME_MS, SAMPLE_RATE, write_wav
from ..stats import percentiles
from .connection import AudioChunk, Event
from .report import EventPrinter, HumanPrinter, JsonPrinter
from .timing import align_assistant_audio, split_frames
from .webrtc import CallRefused, RealtimeCallClient

EXIT_OK, EXIT_FAILED = 0, 1
WIRE_FRAME_MS = 20
REALTIME_CONFIG = ("system_prompt", "voice", "transcribe_user")


def realtime_session(config: dict[str, tp.Any] | None) -> tuple[dict | None, list[str]]:
    """The /ws conversation config as a Realtime session, and the keys it cannot carry."""
    if not config:
        return None, []
    session: dict[str, tp.Any] = {"type": "realtime"}
    if config.get("system_prompt") is not None:
        session["instructions"] = config["system_prompt"]
    if config.get("voice") is not None:
        session.setdefault("audio", {})["output"] = {"voice": config["voice"]}
    if config.get("transcribe_user"):
        session.setdefault("audio", {})["input"] = {"transcription": {"model": "server"}}
    return session, sorted(k for k in config if k not in REALTIME_CONFIG)


def as_printed(event: dict) -> Event | None:
    """A Realtime server event as the /ws event the human printer shows (None: nothing to show)."""
    at, kind = event.get("received_at", time.monotonic()), event.get("type")
    if kind == "session.created":
        session = event.get("session", {})
        return Event("ready", {"session_id": session.get("id"), "modes": [session.get("model")],
                               "audio": {"codec": "opus (WebRTC track, 48 kHz)"}}, at)
    if kind == "conversation.item.input_audio_transcription.completed":
        return Event("final_transcript", {"role": "user", "content": event.get("transcript", "")}, at)
    if kind == "response.output_audio_transcript.done":
        return Event("final_transcript", {"role": "assistant", "content": event.get("transcript", "")}, at)
    if kind == "error":
        return Event("error", dict(event.get("error", {})), at)
    return None


async def converse(args: argparse.Namespace, config: dict | None, user_pcm: np.ndarray | None, mic: tp.Any) -> int:
    printer: EventPrinter = JsonPrinter() if args.json else HumanPrinter(sys.stdout.isatty())
    began = time.monotonic()
    session, dropped = realtime_session(config)
    if dropped:
        print(f"duplex client: not sent over WebRTC (the Realtime session has no field for them): {', '.join(dropped)}",
              file=sys.stderr)
    try:
        call = await RealtimeCallClient.connect(args.url, token=args.token, model=args.mode, session=session)
    except (CallRefused, aiohttp.ClientError, OSError, ValueError) as exc:
        print(f"duplex client: cannot call {args.url}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    printing = asyncio.ensure_future(_print(call, printer, args.json))
    sent_at: list[float] = []
    start = time.monotonic()
    try:
        if args.text:
            await call.send({"type": "conversation.item.create", "item": {"type": "message", "role": "user",
                             "content": [{"type": "input_text", "text": args.text}]}})
            await call.send({"type": "response.create"})
        if user_pcm is not None:
            tail = np.zeros(int(round(args.tail_seconds * SAMPLE_RATE)), dtype=np.float32)
            for frame in split_frames(np.concatenate([user_pcm, tail])):
                await call.send_audio(frame)   # the track paces it in real time (--fast does not apply)
                sent_at.append(time.monotonic())
        elif mic is not None:
            await _send_mic(call, mic, sent_at)
        created = call.of("session.created")
        if not created or created[0]["session"].get("model") != "duplex":   # duplex: it speaks when it will
            await _wait_reply_over(call, args.reply_timeout)
        await call.hang_up()
    finally:
        if mic is not None:
            mic.close()
        await call.close()
        printing.cancel()
    printer.flush()
    if args.output:
        chunks = [AudioChunk(a.pcm, a.received_at, k) for k, a in enumerate(call.audio)]
        pcm = align_assistant_audio(chunks, by_arrival=True, stream_start=start, min_samples=len(sent_at) * 1920)
        write_wav(args.output, pcm)
        print(f"wrote {len(pcm) / SAMPLE_RATE:.2f} s of assistant audio to {args.output}", file=sys.stderr)
    printer.on_summary(summarize(call, len(sent_at), time.monotonic() - began))
    return EXIT_FAILED if call.of("error") and not call.of("response.done") else EXIT_OK


async def _print(call: RealtimeCallClient, printer: EventPrinter, raw: bool) -> None:
    async for event in call.stream():
        shown = Event(event["type"], {k: v for k, v in event.items() if k != "received_at"},
                      event["received_at"]) if raw else as_printed(event)
        if shown is not None:
            printer.on_event(shown)


async def _send_mic(call: RealtimeCallClient, mic: tp.Any, sent_at: list[float]) -> None:
    frames = mic.start(asyncio.get_running_loop())
    print("listening on the microphone; Ctrl-C to stop", file=sys.stderr)
    played = 0
    while not call.closed.is_set():
        await call.send_audio(await frames.get())
        sent_at.append(time.monotonic())
        for piece in call.audio[played:]:
            mic.play(piece.pcm)
        played = len(call.audio)


async def _wait_reply_over(call: RealtimeCallClient, timeout: float) -> None:
    """Until every response opened has been played out (`response.done`, then `.stopped` or `.cleared` for one
    that had audio), at most `timeout` s; at once when none was opened."""
    def over() -> bool:
        created = {e["response"]["id"] for e in call.of("response.created")}
        done = {e["response"]["id"] for e in call.of("response.done")}
        started = {e["response_id"] for e in call.of("output_audio_buffer.started")}
        ended = {e["response_id"] for e in call.of("output_audio_buffer.stopped") + call.of("output_audio_buffer.cleared")}
        return created <= done and started <= ended
    try:
        await call.wait_until(over, timeout, "the end of the reply")
    except TimeoutError:
        print(f"duplex client: the reply had not ended {timeout:g} s after the input (--reply-timeout)", file=sys.stderr)
    except ConnectionError:
        print("duplex client: the call ended before the reply did", file=sys.stderr)


def summarize(call: RealtimeCallClient, frames_sent: int, duration_s: float) -> dict[str, tp.Any]:
    """The WebSocket client's summary, from a call: response latency = end of the user's speech (the server's
    VAD) -> the response's first audio queued on the track (`output_audio_buffer.started`)."""
    latencies, last_stop = [], None
    for event in call.events:
        if event["type"] == "input_audio_buffer.speech_stopped":
            last_stop = event["received_at"]
        elif event["type"] == "output_audio_buffer.started" and last_stop is not None:
            latencies.append((event["received_at"] - last_stop) * 1000.0)
            last_stop = None
    figures = percentiles(latencies, (50, 90))
    created = call.of("session.created")
    return {
        "type": "client_summary", "transport": "webrtc",
        "mode": created[0]["session"].get("model") if created else None,
        "frames_sent": frames_sent,
        "frames_received": len(call.audio) * WIRE_FRAME_MS // FRAME_MS,
        "frame_turnaround_ms": None,   # the track is not frame-locked to the input
        "response_latency_ms": None if figures is None else {**figures, "max": round(max(latencies), 1)},
        "responses": len(call.of("response.done")),
        "frames_dropped": None,
        "errors": len(call.of("error")),
        "duration_s": round(duration_s, 2),
    }
