"""The recording seam: what the connection and session layers tell a socket's recorder.

One `ConversationRecorder` per socket, whatever its protocol. The connection lifecycle
(`connection.py`) feeds it every message the client sends (`message_in`), the delivery of every
audio frame that went on the wire (the `AudioReceipt` the Outbox hands back to the send loop), and
the socket's end (`close`). The codec's conversation logic (`Session` for `/ws`, `MoshiCodec` for
`/api/chat`) marks conversations (`begin`/`end`; a `reset` is an end and a new begin, a new
segment), hands over each consumed user frame (`user_audio`), each outgoing message (`message_out`)
and asks for a receipt when it queues assistant audio (`assistant_audio`), so that only the audio the
client was actually sent lands in the recording, at the place on the conversation clock where it
was played. Every call is cheap and never blocks: the recorder only queues work for its writer
thread (`store.py`).

`NullRecorder` is the recorder of a server that does not record, and of a conversation that opted
out (`config.record: false`).
"""

from __future__ import annotations

import abc
import time
import typing as tp

import numpy as np

from ...engines.base import AssistantAudio, EngineStream


class AudioReceipt(tp.Protocol):
    """Called by the send loop once an assistant audio frame went on the wire (after silencing, if any):
    `pcm` [samples] float32 as sent, `wire` the bytes sent (None: the encoder held the frame back)."""

    def __call__(self, pcm: np.ndarray, wire: str | bytes | None) -> None: ...


class ConversationRecorder(abc.ABC):
    """A socket's recording; called on the event loop only, every call non-blocking."""

    @property
    @abc.abstractmethod
    def recording(self) -> bool:
        """True while a conversation of this socket is being kept."""

    @abc.abstractmethod
    def prepare_config(self, config: dict) -> dict:
        """The config to open the engine with: when this conversation will be kept and names no `seed`,
        a drawn one is added (and recorded), so that a replay can reproduce sampled output."""

    @abc.abstractmethod
    def begin(self, session_id: str, mode: str, config: dict, endpoint_info: dict | None = None) -> None:
        """A conversation (or, after `reset`, a new segment of it) starts; `config.record: false` keeps nothing."""

    @abc.abstractmethod
    def end(self, reason: str) -> None:
        """The conversation or segment is over (`stop`, `reset`, `disconnect`, `shutdown`): its files are
        completed. Call it after queueing the messages that answer the end (they belong to it)."""

    @abc.abstractmethod
    def discard(self) -> None:
        """The client opted out mid-conversation (`configure` with `record: false`): delete what was kept."""

    @abc.abstractmethod
    def message_in(self, data: str | bytes) -> None:
        """A message from the client, as received (audio: logged as kind and size only)."""

    @abc.abstractmethod
    def message_out(self, data: str | bytes, *, verbatim: bool = False) -> None:
        """A message queued for the client (a JSON text protocol message, or a binary non-audio message);
        `verbatim`: a text that is not a JSON message (/api/chat's pieces of the model's text), kept as
        `text` exactly as sent, never parsed."""

    @abc.abstractmethod
    def user_audio(self, pcm: np.ndarray, waited_s: float = 0.0) -> None:
        """One user frame [FRAME_SAMPLES] float32, as consumed by the conversation, in order (frame-locked:
        the model's input, `AssistantAudio.heard`, just before that frame's `assistant_audio`). `waited_s`: how
        long ago it arrived (its turnaround): a frame consumed late is not a pause of the user's."""

    def user_dropped(self, frames: int) -> None:
        """User frames the engine dropped unconsumed (a full input queue): logged, never in the audio."""
        return None

    def user_concealed(self, at_ms: float, ms: float) -> None:
        """User audio lost on the way (a WebRTC call's lost packets), `ms` long at `at_ms` of the call's input:
        logged; it is in the audio as silence."""
        return None

    @abc.abstractmethod
    def assistant_audio(self, samples: int, frame_locked: bool) -> AudioReceipt | None:
        """An assistant frame of `samples` is being queued: its place on the conversation clock is fixed
        now (frame-locked: beside the user frame it answers; else: not before the user's audio so far),
        and the receipt records it if and when it is sent. None: nothing is being kept."""

    @abc.abstractmethod
    def cut(self, what: str, frames: int) -> None:
        """Queued assistant audio was silenced or dropped (`interrupt`, barge-in, `reset`, `stop`)."""

    @abc.abstractmethod
    def close(self, reason: str = "disconnect") -> None:
        """The socket is gone: every open segment is completed."""

    def next_segment(self, stream: EngineStream, session_id: str, mode: str, config: dict, endpoint_info: dict,
                     seed_drawn: bool) -> dict:
        """A `reset` (/ws) or `restart` (/api/chat): the segment ends and a new one begins with the same config.
        A seed the server drew is drawn afresh and given to the stream, so that the new segment replays on
        its own. Returns the conversation's config from now on."""
        if not self.recording:
            return config
        self.end("reset")
        if seed_drawn:
            config = self.prepare_config({k: v for k, v in config.items() if k != "seed"})
            stream.configure({"seed": config["seed"]})
        self.begin(session_id, mode, config, endpoint_info)
        return config


def answers_input_before(frame: AssistantAudio, moment: float | None) -> bool:
    """The frame answers a user frame that arrived before `moment` (monotonic s; a model step was in flight
    at a reset then): a frame-locked recording keeps it in no segment, for counted in the new one it would
    shift every later frame of it by one."""
    return (moment is not None and frame.turnaround_ms is not None
            and time.monotonic() - frame.turnaround_ms / 1000.0 < moment)


class NullRecorder(ConversationRecorder):
    """Keeps nothing."""

    @property
    def recording(self) -> bool:
        return False

    def prepare_config(self, config: dict) -> dict:
        return config

    def begin(self, session_id: str, mode: str, config: dict, endpoint_info: dict | None = None) -> None:
        return None

    def end(self, reason: str) -> None:
        return None

    def discard(self) -> None:
        return None

    def message_in(self, data: str | bytes) -> None:
        return None

    def message_out(self, data: str | bytes, *, verbatim: bool = False) -> None:
        return None

    def user_audio(self, pcm: np.ndarray, waited_s: float = 0.0) -> None:
        return None

    def assistant_audio(self, samples: int, frame_locked: bool) -> AudioReceipt | None:
        return None

    def cut(self, what: str, frames: int) -> None:
        return None

    def close(self, reason: str = "disconnect") -> None:
        return None


NULL_RECORDER = NullRecorder()
