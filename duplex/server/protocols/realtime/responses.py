"""Responses on `/v1/realtime`: `response.create` / `.cancel`, and engine frames -> responses (docs/realtime.md).

A response opens at the first sign of an answer (the cascade's LLM starting, or assistant speech or text
from the duplex model) and closes when the engine ends that turn (`AssistantTurnEnded`, or
`AssistantTurnDone` for a turn that never spoke). Assistant audio is sent only inside a response: between
the duplex model's turns its output is below the speech threshold and is not sent. Audio is queued as PCM
with a marker naming its response (`Response`), so the codec encodes each `response.output_audio.delta`
when it sends it and counts what the client received.
"""

from __future__ import annotations

import base64
import typing as tp

from ....engines.base import (AssistantAudio, AssistantText, AssistantTurnDone, AssistantTurnEnded,
                            AssistantTurnStarted, EngineFrame, LLMProcessing, ResponseOptions, Unsupported,
                            UserTranscript)
from . import events as rt
from .core import RealtimeBase, Response
from .functions import ToolsError, engine_tool_choice, engine_tools

# response.create's fields taken here (`conversation` auto, `output_modalities` audio and `audio` as the session's)
RESPONSE_PARAMS = ("metadata", "conversation", "output_modalities", "audio", "instructions", "tools", "tool_choice")


class Responses(RealtimeBase):
    def _on_response_create(self, body: dict) -> None:
        params = body.get("response") or {}
        if not isinstance(params, dict):
            return self.send_error("bad_message", "`response` must be an object", "response")
        extra = sorted(name for name, value in params.items() if value is not None and name not in RESPONSE_PARAMS)
        if extra or params.get("conversation") not in (None, "auto") or params.get("output_modalities") not in (None, ["audio"]):
            return self.send_error("unsupported", "response.create takes only instructions, tools, tool_choice and "
                                   f"metadata here ({', '.join(extra) or 'conversation / output_modalities'}); "
                                   "use session.update", "response")
        metadata = params.get("metadata")
        if metadata is not None and not isinstance(metadata, dict):
            return self.send_error("bad_message", "`metadata` must be an object", "response.metadata")
        if params.get("instructions") is not None and not isinstance(params["instructions"], str):
            return self.send_error("bad_message", "`instructions` must be a string", "response.instructions")
        stream = self._stream()
        if stream.mode == "duplex":
            raise Unsupported("the duplex model speaks when it decides to: its responses come from its own turns")
        try:   # a response's own tools and choice, in the engine's shape (functions.py)
            tools = engine_tools(params["tools"]) if params.get("tools") is not None else None
            choice = engine_tool_choice(params["tool_choice"]) if params.get("tool_choice") is not None else None
        except ToolsError as exc:
            return self.send_error("bad_message", str(exc), "response.tools")
        options = ResponseOptions(params.get("instructions") or None, tools, choice)
        response = self.response
        if response is not None and response.calls and all(c["status"] == "completed" for c in response.calls):
            # OpenAI's response is done once generated; this one still plays what was said before its calls.
            # A client that answers at once (pipecat runs a function at its arguments.done) has its next
            # response start when this one is over.
            self.queued = (options, metadata)
            return
        if response is not None:
            return self.send_error("conversation_already_has_active_response", f"response {response.id} is in "
                                   "progress; wait for its response.done or cancel it (response.cancel)")
        # first: a turn it cuts (answering before LLMProcessing) closes no response of ours
        stream.respond(options)
        self._open_response(metadata)

    def _on_response_cancel(self, body: dict) -> None:
        wanted = body.get("response_id")
        if self.response is None or wanted not in (None, self.response.id):
            return self.send_error("response_cancel_not_active", "no response in progress" if self.response is None else
                                   f"response {wanted} is not the one in progress", "response_id")
        self._cancel_response("client_cancelled")

    def _on_output_audio_buffer_clear(self, body: dict) -> None:
        if self.output_buffer is None:
            raise Unsupported("output_audio_buffer.clear is for WebRTC calls (docs/webrtc.md); over the WebSocket "
                              "the client holds the audio it was sent: cancel with response.cancel")
        if self.response is not None:
            self._cancel_response("client_cancelled")
        self.output_buffer.clear()

    def _cancel_response(self, reason: str) -> None:
        response = self.response
        assert response is not None
        response.cancel_reason = reason
        self._on_interrupt({})   # queued audio cut, the engine's turn cut (its frames close the response)
        if self.response is response:
            self._close_response(interrupted=True)

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
        if isinstance(frame, AssistantTurnDone) and self.queued is not None and self.response is None:
            (options, metadata), self.queued = self.queued, None   # the turn's last frame: the next one may start
            conv.stream.respond(options)
            self._open_response(metadata)

    def _open_response(self, metadata: dict | None = None) -> None:
        response = self.response = Response(rt.new_id("resp"), rt.new_id("item"), metadata)
        previous = self.items[-1] if self.items else None
        self.items.append(response.item_id)
        self.assistant_items[response.item_id] = response
        item = self.wire_items[response.item_id] = rt.assistant_item(response.item_id, "in_progress", None)
        self.emit("response.created", response=rt.response_object(response.id, "in_progress", [], self.config.voice,
                                                                   metadata=response.metadata))
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
        if response.item_id in self.wire_items:   # not deleted while it played
            self.wire_items[response.item_id] = item
            index = self.items.index(response.item_id)
            self.emit("conversation.item.done", previous_item_id=self.items[index - 1] if index else None, item=item)
            if self.conversation is not None:
                self.conversation.stream.name_reply(response.item_id)   # its words in the context: deletable
        self._end_calls(response.id, response.calls)
        reason = (response.cancel_reason or "client_cancelled") if status == "cancelled" else None
        output = [item, *(dict(call) for call in response.calls)]
        self.emit("response.done", response=rt.response_object(response.id, status, output, self.config.voice, reason,
                                                               response.metadata, rt.usage_object()))

    def _response_event(self, response: Response, type_: str, **fields: tp.Any) -> None:
        self.emit(type_, response_id=response.id, item_id=response.item_id, output_index=0, content_index=0, **fields)

    def audio_delta(self, response: Response, pcm16: bytes) -> str:
        """The codec's side, at send time: one frame of the response's audio as its delta event."""
        response.sent_frames += 1
        return rt.event("response.output_audio.delta", response_id=response.id, item_id=response.item_id,
                        output_index=0, content_index=0, delta=base64.b64encode(pcm16).decode())
