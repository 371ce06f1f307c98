"""The socket protocols: each a codec (`connection.SocketCodec`) on the one connection lifecycle."""

from .moshi import MoshiCodec, handle_chat            # GET /api/chat: Kyutai's moshi byte protocol (docs/moshi-compat.md)
from .realtime import RealtimeCodec, handle_realtime  # GET /v1/realtime: the OpenAI Realtime API (docs/realtime.md)
from .session_codec import SessionCodec               # the codec base of protocols a Session reads (/ws, /v1/realtime)
from .ws import DuplexCodec, handle_ws                # GET /ws: the duplex protocol (docs/protocol.md)

__all__ = [
    "DuplexCodec",       # /ws's codec over a Session
    "MoshiCodec",        # /api/chat's codec over one duplex stream
    "RealtimeCodec",     # /v1/realtime's codec over a RealtimeSession
    "SessionCodec",      # text and binary messages to a Session; 1008 past its bad-message limit
    "handle_chat",       # the /api/chat route handler
    "handle_realtime",   # the /v1/realtime route handler
    "handle_ws",         # the /ws route handler
]
