"""The conversation's items on `/v1/realtime`: `conversation.item.create`, `.delete`, `.retrieve` and
`.truncate` (docs/realtime.md)."""

from __future__ import annotations

import typing as tp

from ....audio import FRAME_MS
from ....engines.base import Unsupported
from . import events as rt
from .core import RealtimeBase

TEXT_PARTS = ("input_text", "output_text", "text")   # a text message's content parts, as clients send them
FUNCTION_ITEMS = ("function_call", "function_call_output")   # functions.py


class ConversationItems(RealtimeBase):
    def _on_conversation_item_create(self, body: dict) -> None:
        """A text message (user, system or assistant) joins the context unanswered, where `previous_item_id`
        says: absent, at the end; `root`, at the start; an item's id, after that item. A function item is
        functions.py's (a result, or a call replayed)."""
        item = body.get("item")
        content = item.get("content") if isinstance(item, dict) else None
        function = isinstance(item, dict) and item.get("type") in FUNCTION_ITEMS
        if not (function or isinstance(item, dict) and item.get("type", "message") == "message"
                and item.get("role") in ("user", "system", "assistant") and isinstance(content, list) and content
                and all(isinstance(c, dict) and c.get("type") in TEXT_PARTS and isinstance(c.get("text"), str)
                        for c in content)):
            return self.send_error("unsupported", "conversation.item.create takes messages of text content here "
                                   "(user, system or assistant; no audio or image), function_call and "
                                   "function_call_output items", "item")
        assert isinstance(item, dict)
        given, previous = item.get("id"), body.get("previous_item_id")
        if given is not None and (not isinstance(given, str) or not given or given in self.wire_items):
            return self.send_error("bad_message", f"item.id must be a new item's id, got {given!r}", "item.id")
        if previous is not None and previous != "root" and previous not in self.wire_items:
            return self.send_error("bad_message", f"no item {previous!r} in this conversation", "previous_item_id")
        item_id = given or rt.new_id("item")
        index = len(self.items) if previous is None else 0 if previous == "root" else self.items.index(previous) + 1
        if function:   # the engine places a result after its call, and a replayed call at the end
            made = self._create_function_item(item, item_id)
            if made is None:
                return
            wire = self.wire_items[item_id] = made
        else:
            text = " ".join(c["text"] for c in tp.cast(list, content)).strip()
            if not text:
                return self.send_error("bad_message", "the message's text is empty", "item.content")
            after = None if index == len(self.items) else self.items[:index][::-1]
            self._stream().add_message(item["role"], text, item_id, after)
            wire = self.wire_items[item_id] = rt.text_item(item_id, item["role"], text)
        self.items.insert(index, item_id)
        previous = self.items[index - 1] if index else None
        self.emit("conversation.item.added", previous_item_id=previous, item=wire)
        self.emit("conversation.item.done", previous_item_id=previous, item=wire)

    def _on_conversation_item_delete(self, body: dict) -> None:
        """The item leaves the conversation and the engine's context (LiveKit deletes what was not played)."""
        item_id = body.get("item_id")
        if not isinstance(item_id, str) or item_id not in self.wire_items:
            return self.send_error("item_delete_invalid_item_id", f"no item {item_id!r} in this conversation",
                                   "item_id")
        stream = self._stream()
        if stream.mode == "duplex":
            raise Unsupported("the duplex model's context keeps what was said; items cannot be deleted")
        if self.response is not None and self.response.item_id == item_id:
            self._cancel_response("client_cancelled")
        stream.delete_message(item_id)
        self.items.remove(item_id)
        del self.wire_items[item_id]
        self.assistant_items.pop(item_id, None)
        self.emit("conversation.item.deleted", item_id=item_id)

    def _on_conversation_item_retrieve(self, body: dict) -> None:
        item_id = body.get("item_id")
        if not isinstance(item_id, str) or item_id not in self.wire_items:
            return self.send_error("item_retrieve_invalid_item_id", f"no item {item_id!r} in this conversation",
                                   "item_id")
        self.emit("conversation.item.retrieved", item=self.wire_items[item_id])

    def _on_conversation_item_truncate(self, body: dict) -> None:
        item_id, end_ms = body.get("item_id"), body.get("audio_end_ms")
        response = self.assistant_items.get(item_id) if isinstance(item_id, str) else None
        if response is None:
            return self.send_error("item_truncate_invalid_item_id", f"no assistant item {item_id!r} in this "
                                   "conversation", "item_id")
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
