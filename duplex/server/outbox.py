"""A session's outgoing queue: bounded, never blocking the producer (the model tick).

Audio is queued as PCM and encoded only when sent, so `interrupt` can turn queued-but-unsent
assistant audio into silence (one frame is still sent per consumed input frame). When a slow
reader lets audio pile up past `max_audio`, the oldest frames are dropped and counted.
An audio frame may carry a receipt (a recording's `AudioReceipt`): the send loop calls it with the
frame as sent (silenced or not), so what is recorded is what the client was sent.
"""

from __future__ import annotations

import asyncio
import collections
import typing as tp

import numpy as np


class SlowReader(Exception):
    """The client has stopped reading; the connection is closed."""


class Outbox:
    def __init__(self, max_audio: int = 50, max_total: int = 2000):
        self.max_audio = max_audio
        self.max_total = max_total
        self._items: collections.deque[tuple[str, tp.Any, tp.Any]] = collections.deque()   # kind, payload, receipt
        self._audio = 0
        self._ready = asyncio.Event()
        self.dropped_audio = 0
        self.overflowed = False

    def __len__(self) -> int:
        return len(self._items)

    def put_text(self, text: str) -> None:
        """A text payload: a JSON message on /ws, a piece of the model's text on /api/chat."""
        self._put("text", text)

    def put_message(self, kind: str, payload: tp.Any) -> None:
        """An item of a codec's own kind (/api/chat's error and ping frames, the realtime codec's response
        boundaries), handed to its `encode_outgoing` in order with the rest; never dropped as audio."""
        assert kind not in ("text", "audio"), "text and audio go through put_text / put_audio (bounded, silenceable)"
        self._put(kind, payload)

    def put_audio(self, pcm: np.ndarray, receipt: tp.Any = None) -> None:
        """One assistant frame; `receipt(pcm, wire)` is called by the send loop once it is sent."""
        if self._audio >= self.max_audio:
            self._drop_oldest_audio()
        self._audio += 1
        self._put("audio", pcm, receipt)

    def _put(self, kind: str, payload: tp.Any, receipt: tp.Any = None) -> None:
        if len(self._items) >= self.max_total:
            self.overflowed = True  # the sender notices and closes the socket
        self._items.append((kind, payload, receipt))
        self._ready.set()

    def _drop_oldest_audio(self) -> None:
        for i, (kind, _, _) in enumerate(self._items):
            if kind == "audio":
                del self._items[i]
                self._audio -= 1
                self.dropped_audio += 1
                return

    def silence_audio(self) -> int:
        """Replaces every queued audio frame with silence; returns how many were replaced."""
        replaced = 0
        for i, (kind, pcm, receipt) in enumerate(self._items):
            if kind == "audio":
                self._items[i] = ("audio", np.zeros_like(pcm), receipt)
                replaced += 1
        return replaced

    def drop_audio(self) -> int:
        """Removes every queued audio frame (on `stop`); returns how many."""
        kept = collections.deque(item for item in self._items if item[0] != "audio")
        dropped = len(self._items) - len(kept)
        self._items = kept
        self._audio = 0
        return dropped

    async def get(self) -> tuple[str, tp.Any]:
        kind, payload, _ = await self.get_with_receipt()
        return kind, payload

    async def get_with_receipt(self) -> tuple[str, tp.Any, tp.Any]:
        """The next item and its receipt (None for none)."""
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        if self.overflowed:
            raise SlowReader(f"more than {self.max_total} messages waiting")
        kind, payload, receipt = self._items.popleft()
        if kind == "audio":
            self._audio -= 1
        return kind, payload, receipt
