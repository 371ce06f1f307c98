"""The input audio buffer on `/v1/realtime`: `input_audio_buffer.append` / `.commit` / `.clear`, server VAD's
speech events and commits, and the user's transcripts of committed items (docs/realtime.md)."""

from __future__ import annotations

import base64
import binascii

import numpy as np

from ....audio import FRAME_MS
from ....engines.base import UserFrame, UserTranscript
from . import events as rt
from .core import RealtimeBase

MIN_COMMIT_MS = 100               # a smaller input buffer cannot be committed (as OpenAI's server)


class InputBuffer(RealtimeBase):
    def _on_input_audio_buffer_append(self, body: dict) -> None:
        audio = body.get("audio")
        if not isinstance(audio, str):
            return self._bad("bad_message", "input_audio_buffer.append needs `audio`: base64 pcm16")
        try:
            data = base64.b64decode(audio, validate=True)
        except (binascii.Error, ValueError) as exc:
            return self._bad("bad_audio", f"`audio` is not valid base64: {exc}")
        if len(data) > self.limits.max_audio_bytes:
            return self._bad("too_large", f"one append carries at most {self.limits.max_audio_bytes} bytes of audio")
        if len(data) % 2:
            return self._bad("bad_audio", f"pcm16 audio has an even number of bytes, got {len(data)}")
        self.feed_audio(self.decoder.decode(data))

    def feed_audio(self, pcm: np.ndarray) -> None:
        """User audio [samples] float32 24 kHz, from an append or a WebRTC call's track: cut into 80 ms frames."""
        if self.conversation is None:
            return   # the call is over (a track frame can still come in while it is torn down)
        for samples in self.frames.push(pcm):
            self._user_frame(UserFrame.of(samples))

    def _user_frame(self, frame: UserFrame) -> None:
        was_active = self.user_voice.active
        super()._user_frame(frame)
        conv = self.conversation
        assert conv is not None
        self.buffer_ms += FRAME_MS
        if self.config.turn_detection is None:
            self.buffer_item = self.buffer_item or rt.new_id("item")
            return
        if self.user_voice.active and not was_active:
            self.buffer_item = self.buffer_item or rt.new_id("item")
            start_ms = (conv.frames_in - self.user_voice.loud_run) * FRAME_MS
            self.emit("input_audio_buffer.speech_started", audio_start_ms=start_ms, item_id=self.buffer_item)
        elif was_active and not self.user_voice.active and self.buffer_item is not None:
            self.emit("input_audio_buffer.speech_stopped", audio_end_ms=conv.frames_in * FRAME_MS,
                      item_id=self.buffer_item)
            self._commit()

    def _on_input_audio_buffer_commit(self, body: dict) -> None:
        if self.buffer_item is None or self.buffer_ms < MIN_COMMIT_MS:
            return self.send_error("input_audio_buffer_commit_empty", f"the input audio buffer holds {self.buffer_ms} ms "
                                   "since the last "
                                   f"commit; at least {MIN_COMMIT_MS} ms are needed")
        self._commit()

    def _commit(self) -> None:
        item_id, self.buffer_item, self.buffer_ms = self.buffer_item, None, 0
        assert item_id is not None
        previous = self.items[-1] if self.items else None
        self.items.append(item_id)
        self.transcript_item = item_id
        self.emit("input_audio_buffer.committed", item_id=item_id, previous_item_id=previous)
        item = self.wire_items[item_id] = rt.user_audio_item(item_id)
        self.emit("conversation.item.added", previous_item_id=previous, item=item)
        self.emit("conversation.item.done", previous_item_id=previous, item=item)

    def _on_input_audio_buffer_clear(self, body: dict) -> None:
        self.frames.clear()   # audio the engine has already taken (every 80 ms) stays in the conversation
        self.buffer_item = None if not self.user_voice.active else self.buffer_item
        self.buffer_ms = 0
        self.emit("input_audio_buffer.cleared")

    def _user_transcript(self, frame: UserTranscript) -> None:
        if self.config.transcription is None:
            return
        item_id = self.transcript_item or self.buffer_item
        if item_id is None:
            item_id = self.buffer_item = rt.new_id("item")
        if frame.end_ms is None:
            delta = frame.content[len(self.partial):] if frame.content.startswith(self.partial) else frame.content
            self.partial = frame.content
            if delta:
                self.emit("conversation.item.input_audio_transcription.delta", item_id=item_id, content_index=0,
                          delta=delta)
            return
        self.emit("conversation.item.input_audio_transcription.completed", item_id=item_id, content_index=0,
                  transcript=frame.content,
                  usage={"type": "duration", "seconds": round(max(0, frame.end_ms - frame.start_ms) / 1000, 3)})
        self.partial = ""
        if item_id == self.transcript_item:
            self.transcript_item = None
