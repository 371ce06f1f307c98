"""The Python client: an async library for the `/ws` protocol (`connection`, `timing`) and the
`duplex client` command (`cli`, with `report` for what it prints and `mic` for live audio)."""

from .connection import AudioChunk, DuplexClient, Event, HandshakeRefused, ServerClosed, build_ws_url
from .timing import FramePacer, align_assistant_audio, split_frames

__all__ = ["AudioChunk", "DuplexClient", "Event", "FramePacer", "HandshakeRefused", "ServerClosed",
           "align_assistant_audio", "build_ws_url", "split_frames"]
