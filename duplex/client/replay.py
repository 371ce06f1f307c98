"""`duplex replay ID`: play a recording back through a server and check that it reproduces.

The recording (`duplex serve --record`, docs/recordings.md) is read from the server (`GET
/recordings/{id}/...`, with the token) or from a local folder (`--dir`). A new `/ws` conversation is
started with the recorded mode and config (its seed included; `record: false` unless `--keep`), and the
user's track is sent as pcm16 frame by frame at its recorded times (gaps included; `--fast`: no waiting),
with the client's control messages (`interrupt`, `configure`, `text_input`) at the place in the user's
audio where they came. The assistant's output is then compared with the recording: its text stream
(`llm_response`) character by character, and, in duplex mode, its audio frame by frame as int16 samples
(the recording's right channel holds what a pcm16 client was sent). It reports "reproduces bit for
bit" or the first divergence, and exits 0 or 1 (2: unreadable, or nothing to compare). Only the assistant
frames the original server sent are compared (one in flight at `stop` was never sent, nor recorded).

Exactness needs the same output for the same input: greedy sampling (temperature 0 and text_temperature 0)
is exact on the same model, device and dtype; seeded sampling is too on the same kind of server, since
each slot draws from its own generator. A user track that came as Opus can only be replayed as its int16
rendering, so small input differences are possible there; the report says so.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import sys
import time
import typing as tp
import wave
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import numpy as np

from ..audio import FRAME_SAMPLES, SAMPLE_RATE
from .connection import DuplexClient

REPLAYED_TYPES = ("interrupt", "configure", "text_input")   # client messages a replay sends again, in place
FAST_AHEAD_FRAMES = 40   # --fast: frames sent ahead of the answers (the server queues 125 per conversation)


class ReplayError(RuntimeError):
    """The recording cannot be read; the message says why."""


@dataclass
class Recording:
    """A recording as read back: meta, events, and the int16 tracks [samples]."""
    meta: dict
    events: list[dict]
    user: np.ndarray
    assistant: np.ndarray
    frame_starts: list[int] = field(default_factory=list)   # start sample of each consumed user frame

    @classmethod
    def parse(cls, meta: bytes, events: bytes, wav: bytes) -> "Recording":
        lines = [json.loads(line) for line in events.decode().splitlines() if line.strip().endswith("}")]
        with wave.open(io.BytesIO(wav)) as w:
            stereo = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, 2)
        rec = cls(json.loads(meta), lines, stereo[:, 0].copy(), stereo[:, 1].copy())
        rec.frame_starts = rec._frame_starts()
        return rec

    def _frame_starts(self) -> list[int]:
        gaps = {e["at"]: e["samples"] for e in self.events if e.get("kind") == "gap"}
        end = self.meta.get("summary", {}).get("user_samples", len(self.user))
        starts, pos = [], 0
        while pos + FRAME_SAMPLES <= end:
            if pos in gaps:
                pos += gaps[pos]
                continue
            starts.append(pos)
            pos += FRAME_SAMPLES
        return starts

    def assistant_text(self) -> str:
        """The model's text stream as sent: /ws `llm_response` contents, or /api/chat's text pieces."""
        return "".join(self._text_piece(e) for e in self.events if e.get("dir") == "out" and e.get("kind") == "text")

    @staticmethod
    def _text_piece(event: dict) -> str:
        msg = event.get("msg")
        if isinstance(msg, dict):
            return str(msg.get("content", "")) if msg.get("type") == "llm_response" else ""
        return str(event.get("text", ""))

    def sent_audio_ms(self) -> set[int]:
        """Where on the clock (ms) the original server's assistant frames were sent: only these are compared
        (a frame in flight at `stop`, or dropped for a slow reader, was never sent and is not in the file)."""
        return {e["at_ms"] for e in self.events if e.get("dir") == "out" and e.get("kind") == "audio" and "at_ms" in e}

    def dropped_input(self) -> int:
        """User frames the original server dropped unconsumed (not in the recording, so not replayed)."""
        return sum(int(e.get("frames", 0)) for e in self.events if e.get("kind") == "drop")

    def controls(self) -> list[tuple[int, dict]]:
        """(user sample position, message) of each client message to send again."""
        return [(e.get("user_at", 0), e["msg"]) for e in self.events
                if e.get("dir") == "in" and isinstance(e.get("msg"), dict) and e["msg"].get("type") in REPLAYED_TYPES]


async def fetch_recording(url: str, recording_id: str, token: str | None) -> Recording:
    base = url.rstrip("/")
    if base.startswith("ws"):
        base = "http" + base[2:]
    if base.endswith("/ws"):
        base = base[:-3]
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    parts: dict[str, bytes] = {}
    async with aiohttp.ClientSession(headers=headers) as http:
        for name in ("meta.json", "events.jsonl", "audio.wav"):
            async with http.get(f"{base}/recordings/{recording_id}/{name}") as response:
                if response.status != 200:
                    raise ReplayError(f"GET /recordings/{recording_id}/{name}: HTTP {response.status} "
                                     f"{(await response.text())[:200]}")
                parts[name] = await response.read()
    return Recording.parse(parts["meta.json"], parts["events.jsonl"], parts["audio.wav"])


def load_recording(folder: Path) -> Recording:
    return Recording.parse((folder / "meta.json").read_bytes(), (folder / "events.jsonl").read_bytes(),
                           (folder / "audio.wav").read_bytes())


@dataclass
class Outcome:
    exact: bool
    lines: list[str]


async def replay(rec: Recording, url: str, token: str | None = None, fast: bool = False, keep: bool = False,
                 timeout: float = 60.0) -> Outcome:
    meta = rec.meta
    mode = meta.get("mode", "duplex")
    config = {k: v for k, v in (meta.get("config") or {}).items() if k != "record"}
    if not keep:
        config["record"] = False
    lines = [f"recording {meta.get('id')}: {mode}, {len(rec.frame_starts)} user frames, config {config}"]
    greedy = config.get("temperature") == 0 and config.get("text_temperature") == 0
    lines.append("sampling: greedy (temperature 0, text_temperature 0): an exact reproduction is expected" if greedy
                 else f"sampling: seeded ({config.get('seed')}), not greedy: exact only on the same kind of server "
                      "(model, device, dtype); use temperature 0 and text_temperature 0 for a certain comparison")
    if meta.get("codec") != "pcm16":
        lines.append(f"note: the user's audio came as {meta.get('codec')}; it is replayed as its int16 rendering")
    if rec.dropped_input():
        lines.append(f"note: the original server dropped {rec.dropped_input()} user frames unconsumed (a full queue); "
                     "the recording holds what the model consumed, and so does the replay")
    if meta.get("summary", {}).get("dropped"):
        lines.append(f"note: the recording lost {meta['summary']['dropped']} to a slow disk; the comparison is partial")
    schedule: list[tuple[int, int, tp.Any]] = [(at, 0, msg) for at, msg in rec.controls()]
    schedule += [(start, 1, k) for k, start in enumerate(rec.frame_starts)]
    schedule.sort(key=lambda item: (item[0], item[1]))
    client = await DuplexClient.connect(url, mode=mode, codec="pcm16", token=token)
    try:
        await client.start(mode=mode, config=config)
        await client.wait_for("status", timeout=timeout)
        started = time.monotonic()
        sent = 0
        for at, _, item in schedule:
            if not fast:
                delay = started + at / SAMPLE_RATE - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            elif mode == "duplex" and sent - client.binary_messages > FAST_AHEAD_FRAMES:
                # never so far ahead that the server's input queue (--max-queue-frames) drops a frame
                await client.wait_audio_frames(sent - FAST_AHEAD_FRAMES, timeout=timeout)
            if isinstance(item, dict):
                if fast and mode == "duplex":
                    # a control applies on the model thread at once, not behind the queued frames: send it
                    # once the frames before it are answered, where a real-time client's came
                    await client.wait_audio_frames(sent, timeout=timeout)
                await client.send_json(item)
            else:
                start = rec.frame_starts[item]
                await client.send_bytes_raw(b"\x01" + rec.user[start:start + FRAME_SAMPLES].astype("<i2").tobytes())
                sent += 1
        expected = len(rec.frame_starts) if mode == "duplex" else sum(
            1 for e in rec.events if e.get("dir") == "out" and e.get("kind") == "audio")
        try:
            await client.wait_audio_frames(expected, timeout=timeout)
        except TimeoutError:
            lines.append(f"the server sent {client.binary_messages} audio frames of {expected} within {timeout:g} s")
        await client.stop()
        await client.wait_for("stop_acknowledged", timeout=timeout)
        await client.wait_for("status", timeout=timeout, predicate=lambda e: e.data.get("status") == "stopped")
        dropped = client.events_of("metrics")[-1].data.get("frames_dropped") or 0   # the answer to `stop`
        if dropped:
            lines.append(f"the server dropped {dropped} replayed frames (a full queue): the comparison is off from there")
    finally:
        await client.close()
    return compare(rec, client, mode, lines)


def compare(rec: Recording, client: DuplexClient, mode: str, lines: list[str]) -> Outcome:
    exact = True
    text = "".join(str(e.data.get("content", "")) for e in client.events_of("llm_response"))
    recorded_text = rec.assistant_text()
    if text != recorded_text:
        exact = False
        at = next((i for i, (a, b) in enumerate(zip(text, recorded_text)) if a != b), min(len(text), len(recorded_text)))
        lines.append(f"text diverges at character {at}: recorded {recorded_text[at:at + 30]!r}, replayed {text[at:at + 30]!r}")
    if mode == "duplex":
        got = [np.round(chunk.pcm * 32768.0).astype(np.int32) for chunk in client.audio]
        sent_ms = rec.sent_audio_ms()
        compared = unsent = 0
        for k, start in enumerate(rec.frame_starts):
            if start * 1000 // SAMPLE_RATE not in sent_ms:
                unsent += 1
                continue
            compared += 1
            want = rec.assistant[start:start + FRAME_SAMPLES].astype(np.int32)
            have = got[k] if k < len(got) else np.zeros(0, dtype=np.int32)
            if len(have) != len(want) or not np.array_equal(have, want):
                exact = False
                diff = int(np.abs(have - want).max()) if len(have) == len(want) else None
                lines.append(f"audio diverges at frame {k} (t = {start * 1000 // SAMPLE_RATE} ms): "
                             + (f"largest sample difference {diff}" if diff is not None else f"{len(have)} samples"))
                break
        if unsent:
            lines.append(f"{unsent} frames the original server never sent (in flight at `stop`, or dropped for a slow "
                         "reader) are not compared")
        summary = f"{compared} frames of assistant audio and {len(text)} characters of text"
    else:
        compared = 0
        summary = f"{len(text)} characters of text (cascade audio depends on timing and is not compared)"
    if not compared and not text and not recorded_text:
        raise ReplayError("nothing to compare: the recording holds no assistant audio that was sent and no text, "
                          "and the replay produced none")
    lines.append(f"reproduces bit for bit: {summary} identical" if exact else f"does not reproduce ({summary} compared)")
    return Outcome(exact, lines)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("replay", help="play a recording back through a server and check it reproduces bit for bit",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter, description=__doc__)
    p.add_argument("id", help="recording id (a folder name in the server's --record DIR; GET /recordings lists them)")
    p.add_argument("--url", default="http://127.0.0.1:8998", help="the server to replay through (and to read the "
                                                                   "recording from, unless --dir)")
    p.add_argument("--token", help="access token of the server")
    p.add_argument("--dir", type=Path, help="read the recording from this local recordings directory instead")
    p.add_argument("--fast", action="store_true", help="send the user's audio as fast as possible, not at its recorded "
                                                       "times (duplex output does not depend on timing, interrupts do)")
    p.add_argument("--keep", action="store_true", help="let the server record the replay too (default: record false)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the server's answers")
    p.add_argument("--log-level", default="warning", help="log verbosity")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    async def go() -> Outcome:
        rec = (load_recording(args.dir / args.id) if args.dir is not None
               else await fetch_recording(args.url, args.id, args.token))
        return await replay(rec, args.url, args.token, fast=args.fast, keep=args.keep, timeout=args.timeout)

    try:
        outcome = asyncio.run(go())
    except (ReplayError, OSError, ValueError) as exc:
        print(f"replay: {exc}", file=sys.stderr)
        return 2
    for line in outcome.lines:
        print(line)
    sys.stdout.flush()
    return 0 if outcome.exact else 1
