"""A Python WebRTC client of `/v1/realtime/calls`, with aiortc: OpenAI's call flow (docs/webrtc.md).

`RealtimeCallClient.connect` does what a web page does: a client secret from `/v1/realtime/client_secrets`
(with the server's token), an SDP offer with one audio track (sendrecv) and the `oai-events` data channel,
`POST /v1/realtime/calls`, the answer, and the wait for the channel to open. Then:

- `send(event)` sends a Realtime client event (a dict) on the channel; every server event is kept in
  `events` (parsed dicts, in arrival order, with `received_at`), `wait_for` waits on one (no polling);
- `send_audio(pcm)` queues the user's audio (24 kHz float32) on the outgoing track, paced in real time
  (silence when nothing is queued, as a microphone would send); `audio` holds the assistant's audio as it
  arrives (24 kHz float32 pieces, 20 ms each, with their arrival times);
- `hang_up()` ends the call on the server (`POST …/hangup`), `close()` closes the peer connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import typing as tp
from dataclasses import dataclass

import aiohttp
import numpy as np
from aiortc import RTCConfiguration, RTCDataChannel, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from ..rtc_audio import PacedTrack, inbound_resampler
from ..rtc_input import use_hole_skipping_buffer

EVENTS_LABEL = "oai-events"


class CallRefused(Exception):
    """The server answered the secret or the offer with an HTTP error: `status`, and OpenAI's error `code`."""

    def __init__(self, status: int, code: str | None, message: str):
        super().__init__(f"HTTP {status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


@dataclass
class ReceivedAudio:
    pcm: np.ndarray      # [n] float32 24 kHz (one 20 ms RTP frame, resampled)
    received_at: float   # time.monotonic()


async def client_secret(http: aiohttp.ClientSession, base_url: str, token: str | None,
                        session: dict | None = None, ttl_s: int | None = None) -> dict:
    """`POST /v1/realtime/client_secrets` -> `{"value", "expires_at", "session"}`."""
    body: dict[str, tp.Any] = {}
    if session is not None:
        body["session"] = session
    if ttl_s is not None:
        body["expires_after"] = {"anchor": "created_at", "seconds": ttl_s}
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with http.post(f"{base_url}/v1/realtime/client_secrets", json=body, headers=headers) as response:
        data = await response.json(content_type=None)
        if response.status != 200:
            raise _refused(response.status, data)
        return data


def _refused(status: int, data: tp.Any) -> CallRefused:
    error = data.get("error", {}) if isinstance(data, dict) else {}
    return CallRefused(status, error.get("code"), error.get("message", str(data)))


class RealtimeCallClient:
    def __init__(self, http: aiohttp.ClientSession, base_url: str, pc: RTCPeerConnection, channel: RTCDataChannel,
                 mic: PacedTrack):
        self.http = http
        self.base_url = base_url
        self.pc = pc
        self.channel = channel
        self.mic = mic
        self.call_id: str | None = None
        self.events: list[dict] = []
        self.audio: list[ReceivedAudio] = []
        self.changed = asyncio.Condition()
        self.closed = asyncio.Event()     # the channel or the connection closed
        self.tasks: list[asyncio.Task] = []
        self._listeners: list[asyncio.Queue[dict | None]] = []   # `stream()`s: each event, then None at the end
        channel.on("message", self._on_message)
        channel.on("close", self._on_closed)
        pc.on("track", self._on_track)
        pc.on("connectionstatechange", self._on_state)

    @classmethod
    async def connect(cls, base_url: str, *, token: str | None = None, model: str | None = None,
                      session: dict | None = None, use_client_secret: bool = True, ice_servers: tp.Sequence[str] = (),
                      send_audio: bool = True, open_timeout: float = 30.0,
                      offer_filter: tp.Callable[[str], str] | None = None,
                      answer_filter: tp.Callable[[str], str] | None = None) -> "RealtimeCallClient":
        """Secret (with the token) -> offer -> `POST /v1/realtime/calls` -> answer -> the channel open.
        `send_audio=False`: the track only receives (the user's audio then goes in `input_audio_buffer.append`).
        `offer_filter` / `answer_filter` rewrite the SDP on its way (e.g. a benchmark's relay puts its own
        address in the candidates, so that the media goes through it)."""
        base_url = base_url.rstrip("/")
        http = aiohttp.ClientSession()
        config = RTCConfiguration(iceServers=[RTCIceServer(u) for u in ice_servers]) if ice_servers else None
        pc = RTCPeerConnection(config)
        try:
            key = token
            if use_client_secret:
                key = (await client_secret(http, base_url, token, session))["value"]
            mic = PacedTrack()
            if send_audio:
                pc.addTrack(mic)   # sendrecv: the user's audio out, the assistant's in, one track
            else:
                pc.addTransceiver("audio", direction="recvonly")
            channel = pc.createDataChannel(EVENTS_LABEL)
            client = cls(http, base_url, pc, channel, mic)
            await pc.setLocalDescription(await pc.createOffer())
            offer = pc.localDescription.sdp
            answer, location = await post_offer(http, base_url, offer_filter(offer) if offer_filter else offer, key,
                                                model, None if use_client_secret else session)
            client.call_id = location.rsplit("/", 1)[-1]
            if answer_filter is not None:
                answer = answer_filter(answer)
            await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
            for transceiver in pc.getTransceivers():   # the downlink too: aiortc's own buffer falls behind after a loss
                if transceiver.kind == "audio":
                    use_hole_skipping_buffer(transceiver.receiver)
            await client._wait_open(open_timeout)
            return client
        except BaseException:
            await pc.close()
            await http.close()
            raise

    async def _wait_open(self, timeout: float) -> None:
        opened = asyncio.Event()
        if self.channel.readyState == "open":
            return
        self.channel.on("open", opened.set)
        waiter = asyncio.ensure_future(opened.wait())
        closer = asyncio.ensure_future(self.closed.wait())
        try:
            await asyncio.wait({waiter, closer}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            closer.cancel()
        if not opened.is_set():
            raise CallRefused(0, "not_connected", f"the data channel did not open within {timeout:g} s")

    async def __aenter__(self) -> "RealtimeCallClient":
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # --- events ---------------------------------------------------------------------------------------
    async def send(self, event: dict) -> None:
        self.channel.send(json.dumps(event))

    def send_raw(self, data: str | bytes) -> None:
        self.channel.send(data)

    def _on_message(self, data: str | bytes) -> None:
        try:
            event = json.loads(data)
        except ValueError:
            event = {"type": "<unparsed>", "data": data}
        if isinstance(event, dict):
            event["received_at"] = time.monotonic()
            self.events.append(event)
            for queue in self._listeners:
                queue.put_nowait(event)
            self._notify()

    async def stream(self) -> tp.AsyncIterator[dict]:
        """Every server event of the call (those already come first), in order, until the call ends."""
        queue: asyncio.Queue[dict | None] = asyncio.Queue()
        for seen in self.events:
            queue.put_nowait(seen)
        self._listeners.append(queue)
        if self.closed.is_set():
            queue.put_nowait(None)
        try:
            while (event := await queue.get()) is not None:
                yield event
        finally:
            self._listeners.remove(queue)

    def _notify(self) -> None:
        async def notify() -> None:
            async with self.changed:
                self.changed.notify_all()
        task = asyncio.ensure_future(notify())
        self.tasks.append(task)
        task.add_done_callback(self.tasks.remove)

    def of(self, type_: str) -> list[dict]:
        return [e for e in self.events if e["type"] == type_]

    async def wait_for(self, type_: str, predicate: tp.Callable[[dict], bool] = lambda e: True, after: int = 0,
                       timeout: float = 30.0) -> dict:
        """The first event of `type_` from index `after` on that satisfies `predicate`."""
        def found() -> dict | None:
            return next((e for e in self.events[after:] if e["type"] == type_ and predicate(e)), None)
        return await self.wait_until(found, timeout, type_)

    async def wait_until(self, check: tp.Callable[[], tp.Any], timeout: float, what: str = "condition") -> tp.Any:
        async with self.changed:
            try:
                await asyncio.wait_for(self.changed.wait_for(lambda: check() or self.closed.is_set()), timeout)
            except asyncio.TimeoutError:
                raise TimeoutError(f"no {what} within {timeout:g} s; got {[e['type'] for e in self.events]}") from None
        result = check()
        if not result:
            raise ConnectionError(f"the call ended before {what}; got {[e['type'] for e in self.events]}")
        return result

    # --- audio ----------------------------------------------------------------------------------------
    async def send_audio(self, pcm: np.ndarray) -> None:
        """User audio [n] float32 24 kHz, queued on the track (waits while more than ~240 ms are queued)."""
        await self.mic.put(pcm)

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio":
            self.tasks.append(asyncio.ensure_future(self._read_audio(track)))

    async def _read_audio(self, track: MediaStreamTrack) -> None:
        resample = inbound_resampler()
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            self.audio.append(ReceivedAudio(resample.frame(frame), time.monotonic()))
            self._notify()

    def assistant_pcm(self) -> np.ndarray:
        return np.concatenate([a.pcm for a in self.audio]) if self.audio else np.zeros(0, np.float32)

    # --- the end --------------------------------------------------------------------------------------
    def _on_closed(self) -> None:
        if not self.closed.is_set():
            self.closed.set()
            for queue in self._listeners:
                queue.put_nowait(None)
        self._notify()

    def _on_state(self) -> None:
        if self.pc.connectionState in ("failed", "closed"):
            self._on_closed()

    async def hang_up(self) -> int:
        """`POST /v1/realtime/calls/{id}/hangup`; returns the HTTP status (200, or 404 once it has ended)."""
        async with self.http.post(f"{self.base_url}/v1/realtime/calls/{self.call_id}/hangup") as response:
            return response.status

    async def close(self) -> None:
        self.mic.stop()
        await self.pc.close()
        for task in list(self.tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.http.close()


async def post_offer(http: aiohttp.ClientSession, base_url: str, sdp: str, key: str | None, model: str | None,
                     session: dict | None = None) -> tuple[str, str]:
    """`POST /v1/realtime/calls` -> (the SDP answer, the Location). With `session`, OpenAI's multipart form."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    params = {"model": model} if model else {}
    data: tp.Any
    if session is not None:
        data = aiohttp.FormData(default_to_multipart=True)
        data.add_field("sdp", sdp)
        data.add_field("session", json.dumps(session))
    else:
        data = sdp
        headers["Content-Type"] = "application/sdp"
    async with http.post(f"{base_url}/v1/realtime/calls", data=data, headers=headers, params=params) as response:
        body = await response.text()
        if response.status != 201:
            try:
                parsed = json.loads(body)
            except ValueError:
                parsed = {"error": {"message": body}}
            raise _refused(response.status, parsed)
        return body, response.headers.get("Location", "")
