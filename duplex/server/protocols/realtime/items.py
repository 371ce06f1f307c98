"""The conversation's items on `/v1/realtime`: `conversation.item.create` and `.truncate` (docs/realtime.md)."""

from __future__ import annotations

from ....audio import FRAME_MS
from ....engines.base import Unsupported
from . import events as rt
from .core import RealtimeBase


class ConversationItems(RealtimeBase):
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
