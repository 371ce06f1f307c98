"""The OpenAI Realtime API's conversation semantics over the session layer (docs/realtime.md).

`RealtimeSession` is a `Session` (state machine, engine choice, conversation clock, limits, bad-message
count, metrics) that reads Realtime client events instead of `/ws` messages and writes Realtime server
events instead of `/ws` ones. Client events map onto the session's operations: the conversation
starts when the socket opens, `input_audio_buffer.append` is user audio, `response.cancel` is
`interrupt`, `session.update` is `configure` (plus engine switch and turn-taking), and the engine seam's
client-driven operations (`add_user_text`, `respond`, `set_auto_respond`, `truncate`).

Engine frames map onto responses: a response opens at the first sign of an answer (the cascade's LLM
starting, or assistant speech or text from the duplex model) and closes when the engine ends that turn
(`AssistantTurnEnded`, or `AssistantTurnDone` for a turn that never spoke). Assistant audio is sent
only inside a response: between the duplex model's turns its output is below the speech threshold and
is not sent. Audio is queued as PCM with a marker naming its response (`Response`), so the codec
encodes each `response.output_audio.delta` when it sends it and counts what the client received.
"""

from __future__ import annotations

import base64
import binascii
import logging
import typing as tp
from dataclasses import dataclass

from ....audio import FRAME_MS
from ....config import default_of
from ....engines.base import (AssistantAudio, AssistantText, AssistantTurnDone, AssistantTurnEnded,
                            AssistantTurnStarted, Engine, EngineFrame, EngineStream, LLMProcessing, Unsupported,
                            UserFrame, UserTranscript)
from . import events as rt
from ...recording import NULL_RECORDER, ConversationRecorder
from ...session import Session, SessionLimits, SessionObserver

log = logging.getLogger(__name__)

MAX_EVENT_BYTES = 512 * 1024      # one client event (base64 audio: ~ 7.5 s of pcm16 at 24 kHz)
MIN_COMMIT_MS = 100               # a smaller input buffer cannot be committed (as OpenAI's server)


@dataclass(eq=False)
class Response:
    """One response: its ids and what the client got of it (`sent_frames` is counted by the codec)."""
    id: str
    item_id: str
    transcript: str = ""
    sent_frames: int = 0            # audio frames (80 ms) encoded and sent to the client
    cancel_reason: str | None = None


class RealtimeSession(Session):
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
        self.assistant_items: dict[str, Response] = {}
        self.response: Response | None = None
        self.buffer_item: str | None = None       # the user item the input buffer will become
        self.buffer_ms = 0                        # audio appended since the last commit
        self.transcript_item: str | None = None   # the committed user item whose transcript is still coming
        self.partial = ""                         # that transcript so far

    # --- outgoing ----------------------------------------------------------------------------------
    def emit(self, type_: str, **fields: tp.Any) -> None:
        self._put_text(rt.event(type_, **fields))

    def send(self, type_: str, **fields: tp.Any) -> None:
        """`/ws` messages from the Session's own code: their Realtime counterparts come from the engine frames."""

    def send_error(self, code: str, text: str, param: str | None = None) -> None:
        self.observer.error(code)
        self.last_error = rt.error_event(code, text, self.client_event_id, param)
        self._put_text(self.last_error)

    # --- the conversation ------------------------------------------------------------------------
    def begin(self) -> bool:
        """Starts the conversation (the socket is open); False when refused (the error is `last_error`)."""
        self._on_start({"mode": self.default_mode, "config": {}})
        if self.conversation is None:
            return False
        self.config = _fresh_config(self.conversation.mode)
        self.emit("session.created", session=self.config.wire(self.session_id))
        return True

    def handle_text(self, data: str) -> None:
        self.heard_client = True
        self.client_event_id = None
        if len(data.encode()) > self.limits.max_text_bytes:
            return self._bad("too_large", f"a client event is limited to {self.limits.max_text_bytes} bytes; "
                                          "send audio in smaller input_audio_buffer.append events")
        try:
            event = rt.parse_client_event(data)
        except rt.RealtimeProtocolError as exc:
            self.client_event_id = exc.event_id
            try:
                return self._bad(exc.code, exc.message)
            finally:
                self.client_event_id = None
        self.client_event_id = event.event_id
        try:
            getattr(self, "_on_" + event.type.replace(".", "_"))(event.body)
        except Unsupported as exc:
            self.send_error(exc.code, str(exc))
        finally:
            self.client_event_id = None

    def handle_binary(self, data: bytes) -> None:
        self.heard_client = True
        self._bad("bad_message", "binary frames are not part of the Realtime API: send audio as base64 pcm16 "
                                 "in input_audio_buffer.append events")

    def _stream(self) -> EngineStream:
        assert self.conversation is not None   # a Realtime conversation lives as long as its socket
        return self.conversation.stream

    # --- session.update --------------------------------------------------------------------------
    def _on_session_update(self, body: dict) -> None:
        update = rt.parse_session_update(body.get("session"), (*[m for m in self.engines], "auto"))
        for param, code, message in update.refused:
            self.send_error(code, message, param)
        changes = update.changes
        if "model" in changes and changes["model"] not in ("auto", self.config.model):
            self._switch_engine(changes["model"])
        persona = {k: changes[k] for k in ("instructions", "voice") if k in changes and changes[k] != getattr(self.config, k)}
        if persona and self.config.model == "duplex":
            self._set_duplex_persona(persona)
            persona = {}
        if "instructions" in persona:
            prompt = changes["instructions"] or default_of("system_prompt")   # "": the server's default prompt
            if self._configure("session.instructions", system_prompt=prompt):
                self.config.instructions = changes["instructions"]
        if "voice" in persona:
            if self._configure("session.audio.output.voice", voice=changes["voice"]):
                self.config.voice = changes["voice"]
        if "transcription" in changes:
            on = changes["transcription"] is not None
            if self.config.model == "cascade" or self._configure("session.audio.input.transcription",
                                                                 transcribe_user=on):
                self.config.transcription = changes["transcription"]
        if "turn_detection" in changes:
            detection = changes["turn_detection"]
            try:
                self._stream().set_auto_respond(detection is not None and detection["create_response"])
                self.config.turn_detection = detection
            except Unsupported as exc:
                self.send_error("unsupported", str(exc), "session.audio.input.turn_detection")
        self.emit("session.updated", session=self.config.wire(self.session_id))

    def _configure(self, param: str, **config: tp.Any) -> bool:
        config = {k: v for k, v in config.items() if v is not None}
        try:
            self._stream().configure(config)
            return True
        except Unsupported as exc:
            self.send_error(exc.code, str(exc), param)
            return False

    def _set_duplex_persona(self, changes: dict) -> None:
        """Duplex: `instructions` and `voice` are the model's persona (PersonaPlex's role and voice prompts),
        which go in before a conversation starts, so the conversation restarts with them (what was said so
        far is lost). Every other setting of the session (user transcription) holds in the new conversation.
        A model without persona support, or an unknown voice: `error` `unsupported`, and the conversation
        goes on as it was."""
        def persona(instructions: str, voice: str | None) -> dict:
            config: dict[str, tp.Any] = {k: v for k, v in (("system_prompt", instructions), ("voice", voice)) if v}
            if self.config.transcription is not None:
                config["transcribe_user"] = True
            return config
        old = persona(self.config.instructions, self.config.voice)
        instructions = changes.get("instructions", self.config.instructions)
        voice = changes.get("voice", self.config.voice)
        new = persona(instructions, voice)
        try:
            self.engines["duplex"].check_config(new)
        except Unsupported as exc:
            param = "session.instructions" if "instructions" in changes else "session.audio.output.voice"
            return self.send_error("unsupported", str(exc), param)
        self._restart("duplex", new)
        if self.conversation is None:   # refused (capacity): back to the previous persona
            self._on_start({"mode": "duplex", "config": old})
            return
        self.config.instructions, self.config.voice = instructions, voice

    def _restart(self, mode: str, config: dict) -> None:
        """The conversation ends (a response under way is cancelled) and a new one starts on `mode`."""
        if self.response is not None:
            self._cancel_response("client_cancelled")
        self._end_conversation()
        self._on_start({"mode": mode, "config": config})

    def _switch_engine(self, mode: str) -> None:
        """`session.update` with another `model`: the conversation restarts on that engine (history lost)."""
        previous = self.config.model
        self._restart(mode, {})
        if self.conversation is None:   # refused (capacity): back to the previous engine
            self._on_start({"mode": previous, "config": {}})
        assert self.conversation is not None
        self.config = _fresh_config(self.conversation.mode)
        self.buffer_item, self.buffer_ms, self.transcript_item, self.partial = None, 0, None, ""

    # --- the input audio buffer ------------------------------------------------------------------
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
        for samples in self.frames.push(self.decoder.decode(data)):
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
            return self.send_error("bad_message", f"the input audio buffer holds {self.buffer_ms} ms since the last "
                                   f"commit; at least {MIN_COMMIT_MS} ms are needed")
        self._commit()

    def _commit(self) -> None:
        item_id, self.buffer_item, self.buffer_ms = self.buffer_item, None, 0
        assert item_id is not None
        previous = self.items[-1] if self.items else None
        self.items.append(item_id)
        self.transcript_item = item_id
        self.emit("input_audio_buffer.committed", item_id=item_id, previous_item_id=previous)
        item = rt.user_audio_item(item_id)
        self.emit("conversation.item.added", previous_item_id=previous, item=item)
        self.emit("conversation.item.done", previous_item_id=previous, item=item)

    def _on_input_audio_buffer_clear(self, body: dict) -> None:
        self.frames.clear()   # audio the engine has already taken (every 80 ms) stays in the conversation
        self.buffer_item = None if not self.user_voice.active else self.buffer_item
        self.buffer_ms = 0
        self.emit("input_audio_buffer.cleared")

    # --- items and responses the client asks for ---------------------------------------------------
    def _on_conversation_item_create(self, body: dict) -> None:
        item = body.get("item")
        content = item.get("content") if isinstance(item, dict) else None
        if not (isinstance(item, dict) and item.get("type", "message") == "message" and item.get("role") == "user"
                and isinstance(content, list) and content
                and all(isinstance(c, dict) and c.get("type") == "input_text" and isinstance(c.get("text"), str)
                        for c in content)):
            return self.send_error("unsupported", "conversation.item.create takes user messages of input_text "
                                   "content here (no audio, image, system, assistant or function items)", "item")
        previous = self.items[-1] if self.items else None
        if body.get("previous_item_id") not in (None, previous):
            return self.send_error("unsupported", "items can only be added at the end of the conversation",
                                   "previous_item_id")
        text = " ".join(c["text"] for c in content).strip()
        if not text:
            return self.send_error("bad_message", "the message's text is empty", "item.content")
        self._stream().add_user_text(text)
        given = item.get("id")
        item_id = given if isinstance(given, str) and given else rt.new_id("item")
        self.items.append(item_id)
        wire = rt.user_text_item(item_id, text)
        self.emit("conversation.item.added", previous_item_id=previous, item=wire)
        self.emit("conversation.item.done", previous_item_id=previous, item=wire)

    def _on_response_create(self, body: dict) -> None:
        params = body.get("response") or {}
        if not isinstance(params, dict):
            return self.send_error("bad_message", "`response` must be an object", "response")
        extra = sorted(name for name, value in params.items()
                       if value is not None and name not in ("metadata", "conversation", "output_modalities", "audio"))
        if extra or params.get("conversation") not in (None, "auto") or params.get("output_modalities") not in (None, ["audio"]):
            return self.send_error("unsupported", "response.create takes no per-response options here "
                                   f"({', '.join(extra) or 'conversation / output_modalities'}); use session.update",
                                   "response")
        stream = self._stream()
        if stream.mode == "duplex":
            raise Unsupported("the duplex model speaks when it decides to: its responses come from its own turns")
        if self.response is not None:
            return self.send_error("bad_message", "a response is in progress; cancel it first (response.cancel)")
        stream.respond()        # first: a turn it cuts (answering before LLMProcessing) closes no response of ours
        self._open_response()

    def _on_response_cancel(self, body: dict) -> None:
        wanted = body.get("response_id")
        if self.response is None or wanted not in (None, self.response.id):
            return self.send_error("bad_message", "no response in progress" if self.response is None else
                                   f"response {wanted} is not the one in progress", "response_id")
        self._cancel_response("client_cancelled")

    def _cancel_response(self, reason: str) -> None:
        response = self.response
        assert response is not None
        response.cancel_reason = reason
        self._on_interrupt({})   # queued audio cut, the engine's turn cut (its frames close the response)
        if self.response is response:
            self._close_response(interrupted=True)

    def _on_conversation_item_truncate(self, body: dict) -> None:
        item_id, end_ms = body.get("item_id"), body.get("audio_end_ms")
        response = self.assistant_items.get(item_id) if isinstance(item_id, str) else None
        if response is None:
            return self.send_error("bad_message", f"no assistant item {item_id!r} in this conversation", "item_id")
        if body.get("content_index", 0) != 0:
            return self.send_error("bad_message", "an assistant item has one content part (index 0)", "content_index")
        if not isinstance(end_ms, int) or isinstance(end_ms, bool) or end_ms < 0:
            return self.send_error("bad_message", "audio_end_ms must be a non-negative integer", "audio_end_ms")
        sent_ms = response.sent_frames * FRAME_MS
        if end_ms > sent_ms:
            return self.send_error("bad_message", f"audio_end_ms {end_ms} is past the {sent_ms} ms of audio sent",
                                   "audio_end_ms")
        stream = self._stream()
        if stream.mode == "duplex":
            raise Unsupported("the duplex model's context keeps what it said; use response.cancel to silence it")
        latest = next(i for i in reversed(self.items) if i in self.assistant_items)
        if item_id != latest:
            raise Unsupported("only the latest assistant item can be truncated here")
        if self.response is response:
            response.cancel_reason = "client_cancelled"
            assert self.conversation is not None
            self._cut_queued_audio(self.conversation, "truncate")
        stream.truncate(end_ms)
        if self.response is response:
            self._close_response(interrupted=True)
        self.emit("conversation.item.truncated", item_id=item_id, content_index=0, audio_end_ms=end_ms)

    # --- engine frames -> Realtime events --------------------------------------------------------
    def _on_engine_frame(self, frame: EngineFrame) -> None:
        conv = self.conversation
        if conv is None:
            return
        if isinstance(frame, AssistantAudio):
            receipt = self._assistant_audio(conv, frame)
            if self.response is not None:   # outside a response the duplex model is quiet: nothing is sent
                self.outbox.put_audio(frame.pcm, receipt)
            return
        if isinstance(frame, UserTranscript):
            return self._user_transcript(frame)
        if isinstance(frame, (LLMProcessing, AssistantTurnStarted, AssistantText)) and self.response is None:
            self._open_response()
        if isinstance(frame, AssistantText) and self.response is not None:
            self.response.transcript += frame.text
            self._response_event(self.response, "response.output_audio_transcript.delta", delta=frame.text)
        super()._on_engine_frame(frame)   # clock, latency and metrics, barge-in's cut of queued audio, errors
        if isinstance(frame, AssistantTurnEnded) and self.response is not None:
            if frame.barge_in:
                self.response.cancel_reason = "turn_detected"
            self._close_response(frame.interrupted)
        elif isinstance(frame, AssistantTurnDone) and self.response is not None:
            self._close_response(frame.interrupted)

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

    def _open_response(self) -> None:
        response = self.response = Response(rt.new_id("resp"), rt.new_id("item"))
        previous = self.items[-1] if self.items else None
        self.items.append(response.item_id)
        self.assistant_items[response.item_id] = response
        item = rt.assistant_item(response.item_id, "in_progress", None)
        self.emit("response.created", response=rt.response_object(response.id, "in_progress", [], self.config.voice))
        self.emit("response.output_item.added", response_id=response.id, output_index=0, item=item)
        self.emit("conversation.item.added", previous_item_id=previous, item=item)
        self._response_event(response, "response.content_part.added", part={"type": "audio", "transcript": ""})
        self.outbox.put_message("response", response)   # the audio after this belongs to it

    def _close_response(self, interrupted: bool) -> None:
        response = self.response
        assert response is not None
        self.response = None
        self.outbox.put_message("response", None)
        transcript = response.transcript.strip()
        status = "cancelled" if interrupted or response.cancel_reason else "completed"
        self._response_event(response, "response.output_audio.done")
        self._response_event(response, "response.output_audio_transcript.done", transcript=transcript)
        self._response_event(response, "response.content_part.done", part={"type": "audio", "transcript": transcript})
        item = rt.assistant_item(response.item_id, "incomplete" if status == "cancelled" else "completed", transcript)
        self.emit("response.output_item.done", response_id=response.id, output_index=0, item=item)
        index = self.items.index(response.item_id)
        self.emit("conversation.item.done", previous_item_id=self.items[index - 1] if index else None, item=item)
        reason = (response.cancel_reason or "client_cancelled") if status == "cancelled" else None
        self.emit("response.done", response=rt.response_object(response.id, status, [item], self.config.voice, reason))

    def _response_event(self, response: Response, type_: str, **fields: tp.Any) -> None:
        self.emit(type_, response_id=response.id, item_id=response.item_id, output_index=0, content_index=0, **fields)

    def audio_delta(self, response: Response, pcm16: bytes) -> str:
        """The codec's side, at send time: one frame of the response's audio as its delta event."""
        response.sent_frames += 1
        return rt.event("response.output_audio.delta", response_id=response.id, item_id=response.item_id,
                        output_index=0, content_index=0, delta=base64.b64encode(pcm16).decode())


def _fresh_config(mode: str) -> rt.RealtimeConfig:
    """A new conversation's session as the client sees it (the cascade's default system prompt shown)."""
    return rt.RealtimeConfig(mode, instructions=default_of("system_prompt") if mode == "cascade" else "")
