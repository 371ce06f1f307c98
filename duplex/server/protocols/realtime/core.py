"""What every part of a `/v1/realtime` session shares: its state, and its outgoing side (events, errors).

`RealtimeSession` (session.py) is a `Session` (state machine, engine choice, conversation clock, limits,
bad-message count, metrics) that reads Realtime client events instead of `/ws` messages and writes
Realtime server events instead of `/ws` ones. It is put together from one part per job, each a subclass
of `RealtimeBase` and each in its own module:

- settings.py: `session.update` (instructions, voice, transcription, turn detection, engine switch);
- input_buffer.py: `input_audio_buffer.*`, server VAD's commits and the user's transcripts;
- items.py: the conversation's items (`conversation.item.*`);
- responses.py: `response.create` / `.cancel`, and engine frames -> responses and their audio;
- functions.py: function calling (`tools`, a response's `function_call` items, `function_call_output`).
"""

from __future__ import annotations

import typing as tp
from dataclasses import dataclass, field

from ....engines.base import Engine, EngineStream, UserTranscript
from . import events as rt
from ...recording import NULL_RECORDER, ConversationRecorder
from ...session import Session, SessionLimits, SessionObserver

MAX_EVENT_BYTES = 512 * 1024      # one client event (base64 audio: ~ 7.5 s of pcm16 at 24 kHz)


class OutputAudioBuffer(tp.Protocol):
    """The transport's assistant audio not yet played out: a WebRTC call's outgoing track (webrtc/media.py).
    A WebSocket has none (the client holds what it was sent), so `output_audio_buffer.clear` is refused there."""

    def clear(self) -> None:
        """Drops the audio queued for the peer (the transport says `output_audio_buffer.cleared`)."""


@dataclass(eq=False)
class Response:
    """One response: its ids and what the client got of it (`sent_frames` is counted by the codec)."""
    id: str
    item_id: str
    metadata: dict | None = None    # the response.create's, echoed in response.created and response.done
    transcript: str = ""
    sent_frames: int = 0            # audio frames (80 ms) encoded and sent to the client
    cancel_reason: str | None = None
    calls: list[dict] = field(default_factory=list)   # its function_call items (output_index 1, 2, ...)


class RealtimeBase(Session):
    def __init__(self, engines: dict[str, Engine], observer: SessionObserver, mode: str,
                 speech_threshold_dbfs: float = -45.0, recorder: ConversationRecorder = NULL_RECORDER):
        super().__init__(engines, "pcm16", observer, default_mode=mode,
                         limits=SessionLimits(max_text_bytes=MAX_EVENT_BYTES), speech_threshold_dbfs=speech_threshold_dbfs,
                         recorder=recorder)
        self.session_id = rt.new_id("sess")
        self.config = rt.RealtimeConfig(mode)
        self.client_event_id: str | None = None   # the event being handled: errors name it
        self.last_error: str | None = None
        self.heard_client = False                 # a first client event came (the start timeout is over)
        self.items: list[str] = []                # conversation item ids, in order
        self.wire_items: dict[str, dict] = {}     # each item as the client sees it (conversation.item.retrieve)
        self.assistant_items: dict[str, Response] = {}
        self.response: Response | None = None
        self.queued: tuple[tp.Any, dict | None] | None = None   # a response.create for after this one (responses.py)
        self.buffer_item: str | None = None       # the user item the input buffer will become
        self.buffer_ms = 0                        # audio appended since the last commit
        self.transcript_item: str | None = None   # the committed user item whose transcript is still coming
        self.partial = ""                         # that transcript so far
        self.output_buffer: OutputAudioBuffer | None = None   # set by a transport that plays audio out (WebRTC)

    # --- outgoing ----------------------------------------------------------------------------------
    def emit(self, type_: str, **fields: tp.Any) -> None:
        self._put_text(rt.event(type_, **fields))

    def send(self, type_: str, **fields: tp.Any) -> None:
        """`/ws` messages from the Session's own code: their Realtime counterparts come from the engine frames."""

    def send_error(self, code: str, text: str, param: str | None = None) -> None:
        self.observer.error(code)
        self.last_error = rt.error_event(code, text, self.client_event_id, param)
        self._put_text(self.last_error)

    def _stream(self) -> EngineStream:
        assert self.conversation is not None   # a Realtime conversation lives as long as its socket
        return self.conversation.stream

    # --- what one part calls in another (responses.py, input_buffer.py) ---------------------------
    def _cancel_response(self, reason: str) -> None:
        raise NotImplementedError

    def _close_response(self, interrupted: bool) -> None:
        raise NotImplementedError

    def _user_transcript(self, frame: UserTranscript) -> None:
        raise NotImplementedError

    def _set_tools(self, changes: dict) -> None:
        raise NotImplementedError

    def _create_function_item(self, item: dict, item_id: str) -> dict | None:
        raise NotImplementedError

    def _end_calls(self, response_id: str, calls: list[dict]) -> None:
        raise NotImplementedError
