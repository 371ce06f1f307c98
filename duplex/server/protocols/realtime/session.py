"""The OpenAI Realtime API's conversation semantics over the session layer (docs/realtime.md).

`RealtimeSession` is a `Session` that reads Realtime client events and writes Realtime server events
(core.py says how it is put together). Client events map onto the session's operations: the conversation
starts when the socket opens, `input_audio_buffer.append` is user audio, `response.cancel` is `interrupt`,
`session.update` is `configure` (plus engine switch and turn-taking), and the engine seam's client-driven
operations (`add_user_text`, `respond`, `set_auto_respond`, `truncate`). Each client event `x.y` is handled
by the part's method `_on_x_y`.
"""

from __future__ import annotations

import logging

from ....engines.base import Unsupported
from . import events as rt
from .core import Response
from .functions import FunctionCalls
from .input_buffer import InputBuffer
from .items import ConversationItems
from .responses import Responses
from .settings import SessionSettings, fresh_config

log = logging.getLogger(__name__)

__all__ = ["RealtimeSession", "Response"]


class RealtimeSession(SessionSettings, InputBuffer, ConversationItems, FunctionCalls, Responses):
    def begin(self) -> bool:
        """Starts the conversation (the socket is open); False when refused (the error is `last_error`)."""
        self._on_start({"mode": self.default_mode, "config": {}})
        if self.conversation is None:
            return False
        self.config = fresh_config(self.conversation.mode)
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
