"""The server's settings that handlers read (`app[state.SETTINGS]`): access token, static files, limits."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DEFAULT_STATIC = Path(__file__).resolve().parents[2] / "client"


@dataclass
class ServerSettings:
    token: str | None = None
    static_dir: Path | None = DEFAULT_STATIC
    max_message_bytes: int = 1024 * 1024   # aiohttp closes the socket (1009) past this
    speech_threshold_dbfs: float = -45.0
    max_connections: int = 1000            # conversation sockets open at once (/ws + /api/chat); 0 = no limit
    start_timeout_s: float = 30.0          # a socket with no conversation this long is closed 1008; 0 = never
    webrtc_silence_s: float = 10.0         # a WebRTC call whose audio stopped this long is ended; 0 = never
    webrtc_ice_servers: tuple[str, ...] = ()   # STUN/TURN URLs for WebRTC calls (none: host candidates only)
    opus_workers: int = 0                  # processes that encode Opus (0: on the event loop); `duplex serve`: 1
