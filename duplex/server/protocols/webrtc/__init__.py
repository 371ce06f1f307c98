"""WebRTC: the OpenAI Realtime API's call flow (GA), the same `RealtimeSession` on a second transport (docs/webrtc.md).

`POST /v1/realtime/client_secrets` gives a page a short-lived key; `POST /v1/realtime/calls` takes its SDP
offer and answers; the call then carries the session's events on the `oai-events` data channel and the audio
on one Opus track both ways. Modules: secrets.py (the keys), calls.py (the HTTP side), call.py (one call's
life); duplex/rtc_audio.py, shared with the client, resamples 48 <-> 24 kHz and paces outgoing tracks.
"""

from __future__ import annotations

from aiohttp import web

from .calls import CALLS, handle_calls, handle_hangup
from .secrets import CLIENT_SECRETS, ClientSecrets, handle_client_secrets

__all__ = ["add_webrtc_routes"]


def add_webrtc_routes(app: web.Application) -> None:
    app[CLIENT_SECRETS] = ClientSecrets()
    app[CALLS] = {}
    app.router.add_post("/v1/realtime/client_secrets", handle_client_secrets)
    app.router.add_post("/v1/realtime/calls", handle_calls)
    app.router.add_post("/v1/realtime/calls/{call_id}/hangup", handle_hangup)
