"""`/v1/realtime`: the OpenAI Realtime API (GA events, pcm16 24 kHz) over both engines (docs/realtime.md)."""

from .codec import RealtimeCodec, handle_realtime
from .events import RealtimeProtocolError, parse_client_event, parse_session_update
from .session import RealtimeSession

__all__ = [
    "RealtimeCodec",            # the socket side: JSON events both ways, audio encoded as base64 pcm16 when sent
    "RealtimeProtocolError",    # a client event the API refuses (its error type, code and param)
    "RealtimeSession",          # a Session: Realtime client events -> session operations, engine frames -> responses
    "handle_realtime",          # the route handler
    "parse_client_event",       # one client event's JSON -> ClientEvent (or RealtimeProtocolError)
    "parse_session_update",     # session.update's fields -> SessionUpdate
]
