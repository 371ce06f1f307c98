"""`POST /v1/realtime/calls` (an SDP offer in, `201` and the SDP answer out) and `…/calls/{id}/hangup`.

As OpenAI's GA WebRTC API: the offer is the body (`Content-Type: application/sdp`) or the `sdp` field of a
multipart form whose `session` field is a session configuration; `Authorization: Bearer` carries a client
secret (`ek_…`, from /v1/realtime/client_secrets) or the server's token; `?model=` picks the engine as on
the WebSocket. The answer names the call in `Location: /v1/realtime/calls/<call_id>`.

Nothing is allocated before the request is known good: a wrong or expired secret is 401, a malformed
offer 400 (`bad_message`), a full server 503 (`capacity`, as the WebSocket's refusal says it), all in
OpenAI's error shape. A call counts in the app's set of open conversations, so `--max-connections`, the
drain and the shutdown treat it as they treat a socket. The hang-up needs the call id only: it is random
(as unguessable as a secret) and only the caller was given it.
"""

from __future__ import annotations

import json
import secrets
import typing as tp

from aiohttp import web
from aiortc.sdp import SessionDescription

from .... import protocol
from ... import capacity
from ...auth import token_ok
from ...capacity import admitted_engine
from ...recording import NULL_RECORDER
from ...state import ENGINES, METRICS, RECORDINGS, SETTINGS, SOCKETS
from ..realtime import RealtimeSession
from .call import RealtimeCall
from .secrets import CLIENT_SECRETS, PREFIX, ClientSecret, http_error

ENDPOINT = "webrtc"            # the `endpoint` label of the connection metrics, and the recordings'
MAX_SDP_BYTES = 64 * 1024      # a browser's offer is ~ 2-6 KiB
CALLS = web.AppKey("webrtc_calls", dict[str, RealtimeCall])


async def handle_calls(request: web.Request) -> web.Response:
    app = request.app
    key = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    secret: ClientSecret | None = None
    if key.startswith(PREFIX):
        secret = app[CLIENT_SECRETS].find(key)
        if secret is None:
            return _refused(request, 401, "unauthorized", "the client secret is unknown, spent or expired; "
                            "get a new one from POST /v1/realtime/client_secrets")
    elif not token_ok(request):
        return _refused(request, 401, "unauthorized", "Authorization: Bearer <a client secret or the server's token> "
                        "is required")
    offer = await _read_offer(request)
    if isinstance(offer, web.Response):
        return offer
    sdp, session_config = offer
    if secret is not None:
        session_config = {**(secret.session or {}), **(session_config or {})} or None
    # From here to `sockets.add` nothing awaits: a burst of calls cannot all see room for one more.
    settings, sockets = app[SETTINGS], app[SOCKETS]
    if (settings.max_connections and len(sockets) >= settings.max_connections) or capacity.draining(app):
        return _refused(request, 503, "capacity", "server shutting down: try again (another worker will take it)"
                        if capacity.draining(app) else f"server full: {len(sockets)} connections open, try again later",
                        label="max_connections")
    model = request.query.get("model") or (session_config or {}).get("model") or "auto"
    store = app.get(RECORDINGS)
    recorder = store.for_socket(ENDPOINT) if store is not None else NULL_RECORDER
    session = RealtimeSession(app[ENGINES], app[METRICS], model if model in protocol.MODES else "auto",
                              speech_threshold_dbfs=settings.speech_threshold_dbfs, recorder=recorder)
    session.auto_first = admitted_engine(request)
    if not session.begin():
        recorder.close("disconnect")
        message = json.loads(session.last_error or "{}").get("error", {}).get("message", "no engine slot free")
        return _refused(request, 503, "capacity", message, label="no_slot")
    call = RealtimeCall("rtc_" + secrets.token_hex(16), session, recorder, silence_s=settings.webrtc_silence_s,
                        connect_s=settings.start_timeout_s or 30.0, ice_servers=settings.webrtc_ice_servers,
                        on_concealed=app[METRICS].rtc_concealed.inc)
    sockets.add(call)
    try:
        answer = await call.answer(sdp)
    except Exception as exc:   # aiortc's parse and negotiation errors: ValueError, and others for odd offers
        sockets.discard(call)
        call.hang_up("bad offer")
        await call.run()   # tears down at once: the slot, the recorder, the peer connection
        return _refused(request, 400, "bad_message", f"the SDP offer could not be negotiated: {exc}"[:300], "sdp")
    if secret is not None:
        app[CLIENT_SECRETS].spend(secret)
    rest = {k: v for k, v in (session_config or {}).items() if k != "model"}   # the model chose the engine above
    if rest:   # applied as a session.update: `session.updated` follows `session.created`
        session.handle_text(json.dumps({"type": "session.update", "session": rest}))
    _begin(app, call)
    return web.Response(status=201, text=answer, content_type="application/sdp",
                        headers={"Location": f"/v1/realtime/calls/{call.id}"})


def _begin(app: web.Application, call: RealtimeCall) -> None:
    calls = app[CALLS]
    calls[call.id] = call
    gauge = app[METRICS].connections.labels(ENDPOINT)
    gauge.inc()
    call.start()

    def ended(_: tp.Any) -> None:
        calls.pop(call.id, None)
        app[SOCKETS].discard(call)
        gauge.dec()
        capacity.socket_closed(app)   # a drain waits for the last one

    assert call.done is not None
    call.done.add_done_callback(ended)


async def handle_hangup(request: web.Request) -> web.Response:
    call = request.app[CALLS].get(request.match_info["call_id"])
    if call is None:
        return http_error(404, "not_found", "no such call (it may have ended already)")
    call.hang_up("hung up by the client")
    await call.close()
    return web.json_response({})


async def _read_offer(request: web.Request) -> tuple[str, dict | None] | web.Response:
    """The offer's SDP and the form's `session` (None when not given), or the 4xx answer."""
    if (request.content_length or 0) > MAX_SDP_BYTES:
        return _refused(request, 413, "too_large", f"the offer is limited to {MAX_SDP_BYTES} bytes")
    session: tp.Any = None
    if request.content_type in ("multipart/form-data", "application/x-www-form-urlencoded"):
        form = await request.post()
        sdp, raw = form.get("sdp"), form.get("session")
        if raw is not None:
            try:
                session = json.loads(str(raw))
            except ValueError:
                return _refused(request, 400, "bad_message", "the `session` field must be JSON", "session")
            if not isinstance(session, dict):
                return _refused(request, 400, "bad_message", "the `session` field must be an object", "session")
    else:
        if request.content_type != "application/sdp":
            return _refused(request, 400, "bad_message", "send the offer as Content-Type: application/sdp "
                            "(or a multipart form with `sdp`)", "content-type")
        sdp = await request.content.read(MAX_SDP_BYTES + 1)
    if isinstance(sdp, bytes):
        sdp = sdp.decode(errors="replace")
    if not isinstance(sdp, str) or not sdp.strip():
        return _refused(request, 400, "bad_message", "the SDP offer is missing", "sdp")
    if len(sdp) > MAX_SDP_BYTES:
        return _refused(request, 413, "too_large", f"the offer is limited to {MAX_SDP_BYTES} bytes")
    problem = _sdp_problem(sdp)
    if problem is not None:
        return _refused(request, 400, "bad_message", problem, "sdp")
    return sdp, session


def _sdp_problem(sdp: str) -> str | None:
    """Why the offer is not one this server can answer, checked before anything is allocated (None: fine)."""
    if not sdp.lstrip().startswith("v=0"):
        return "the SDP offer must start with v=0"
    try:
        parsed = SessionDescription.parse(sdp)
    except Exception as exc:   # the parser raises what it meets (ValueError, IndexError, KeyError, ...)
        return f"the SDP offer does not parse: {type(exc).__name__}: {exc}"[:300]
    kinds = {media.kind for media in parsed.media}
    if not kinds & {"audio", "application"}:
        return "the SDP offer needs an audio m-line or the oai-events data channel"
    if any(media.ice is None or not media.ice.usernameFragment or not media.dtls for media in parsed.media):
        return "the SDP offer lacks ICE credentials or a DTLS fingerprint"
    return None


def _refused(request: web.Request, status: int, code: str, message: str, param: str | None = None,
             label: str | None = None) -> web.Response:
    metrics = request.app[METRICS]
    metrics.error(code)
    metrics.refused.labels(ENDPOINT, label or code).inc()
    return http_error(status, code, message, param)
