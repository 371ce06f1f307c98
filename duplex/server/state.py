"""The app's typed state: one `web.AppKey` per thing the handlers read from the application.

Handlers write `request.app[ENGINES]`, never a string key, so a typo is an error at import time and
a type checker knows what each lookup returns.
"""

from __future__ import annotations

import typing as tp

from aiohttp import web

from ..engines.base import Engine
from .metrics import ServerMetrics
from .opus_pool import OpusPool
from .recording import RecordingStore
from .settings import ServerSettings

ENGINES = web.AppKey("engines", dict[str, Engine])           # loaded engines by mode: "duplex", "cascade"
SETTINGS = web.AppKey("settings", ServerSettings)
METRICS = web.AppKey("metrics", ServerMetrics)


class OpenConversation(tp.Protocol):
    """What the app holds of an open conversation: a WebSocket, or a WebRTC call (protocols/webrtc/call.py)."""

    async def close(self, *, code: int = ..., message: bytes = ...) -> bool: ...


# conversations admitted (sockets from before the upgrade to after the close, WebRTC calls from their offer to
# their end): what --max-connections counts; closed 1001 on shutdown
SOCKETS = web.AppKey("sockets", set[OpenConversation])
OPUS_POOL = web.AppKey("opus_pool", OpusPool)   # present when --opus-workers > 0
RECORDINGS = web.AppKey("recordings", RecordingStore)   # present when the server records (--record DIR)
