"""One WebRTC call: a `RealtimeSession` carried by a peer connection instead of a WebSocket (docs/webrtc.md).

The session is the `/v1/realtime` one, unchanged: its client events come as JSON text on the `oai-events`
data channel, its server events go back there. Only audio travels differently: the user's comes on the
peer's Opus track (resampled to 24 kHz, `session.feed_audio`), the assistant's goes out on the call's
own track (`rtc_audio.PacedTrack`) instead of `response.output_audio.delta` events; in their place the
call says `output_audio_buffer.started` (a response's first audio is queued), `.stopped` (its last
audio has been played out) and `.cleared` (cut by `output_audio_buffer.clear` or a cancelled response).

The call's send loop drains the session's outbox like the WebSocket's does, so events and audio leave in
the order the session queued them; the track's bounded queue paces it. A call ends, and its slot is
freed at once, on hang-up (HTTP or `close()` at shutdown), when the peer connection fails or closes (ICE,
DTLS; aioice's consent checks find a vanished peer within ~30 s), when the data channel closes, when a
peer that sends audio has sent none for `silence_s`, or when it never connects within `connect_s`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import typing as tp

from aiortc import RTCConfiguration, RTCDataChannel, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from ...outbox import SlowReader
from ...recording import ConversationRecorder
from ...session import TooManyBadMessages
from ..realtime import RealtimeSession
from ..realtime import events as rt
from ..realtime.core import Response
from ....rtc_audio import PacedTrack
from ....rtc_input import InputClock, use_hole_skipping_buffer

log = logging.getLogger(__name__)

EVENTS_LABEL = "oai-events"            # the data channel OpenAI's clients open
MAX_BUFFERED_BYTES = 4 * 1024 * 1024   # events the peer has not taken yet: past this it is a slow reader


class RealtimeCall:
    def __init__(self, call_id: str, session: RealtimeSession, recorder: ConversationRecorder, *,
                 silence_s: float, connect_s: float, ice_servers: tp.Sequence[str] = (),
                 on_concealed: tp.Callable[[float], None] = lambda ms: None):
        self.id = call_id
        self.session = session
        self.recorder = recorder
        self.silence_s = silence_s     # a peer that sends audio and stops for this long is gone
        self.connect_s = connect_s     # ICE + DTLS must be done by then
        self.on_concealed = on_concealed   # ms of the peer's audio lost on the way (filled with silence)
        self.input = InputClock()          # the peer's audio on its RTP clock
        config = RTCConfiguration(iceServers=[RTCIceServer(url) for url in ice_servers]) if ice_servers else None
        self.pc = RTCPeerConnection(config)
        self.track = PacedTrack(self._played)
        self.channel: RTCDataChannel | None = None
        self.channel_open = asyncio.Event()
        self.expects_channel = True    # the offer has an application m-line (else events have no reader: dropped)
        self.ended = asyncio.Event()
        self.wake = asyncio.Event()    # the watchdog's deadline may have changed (connection state, a track)
        self.end_reason = ""
        self.created = self.last_heard = time.monotonic()
        self.hears_audio = False       # the peer sends a track: silence on it means it is gone
        self.target: Response | None = None    # the response the next audio frames belong to (send order)
        self.playing: str | None = None        # the response whose audio is in the track (started, not stopped)
        self.tasks: list[asyncio.Task] = []
        self.done: asyncio.Task | None = None   # `run`, once started
        session.output_buffer = self

    # --- setting up ------------------------------------------------------------------------------
    async def answer(self, offer_sdp: str) -> str:
        """The SDP answer to the peer's offer (ICE candidates gathered: host ones, plus STUN's if given).
        Raises ValueError for an offer aiortc cannot take."""
        pc = self.pc
        pc.on("datachannel", self._attach)
        pc.on("track", self._on_track)
        pc.on("connectionstatechange", self._on_connection_state)
        await pc.setRemoteDescription(RTCSessionDescription(offer_sdp, "offer"))
        self.expects_channel = pc.sctp is not None
        audio = [t for t in pc.getTransceivers() if t.kind == "audio"]
        for transceiver in audio:   # before any packet: aiortc's own buffer falls behind after a loss
            use_hole_skipping_buffer(transceiver.receiver)
        if audio:
            pc.addTrack(self.track)   # takes the offer's audio transceiver: one track, both ways
        await pc.setLocalDescription(await pc.createAnswer())
        return pc.localDescription.sdp

    def start(self) -> None:
        self.done = asyncio.create_task(self.run())

    async def run(self) -> None:
        self._ends_on_failure(asyncio.create_task(self._send_loop(), name="send loop"))
        self._ends_on_failure(asyncio.create_task(self._watch(), name="watchdog"))
        try:
            await self.ended.wait()
        finally:
            await self._teardown()

    def hang_up(self, reason: str) -> None:
        if not self.ended.is_set():
            self.end_reason = reason
            log.info("call %s: ended, %s", self.id, reason)
            self.ended.set()
            self.wake.set()

    def _ends_on_failure(self, task: asyncio.Task) -> asyncio.Task:
        """A task of the call whose failure ends the call (logged once), instead of dying unseen."""
        def done(task: asyncio.Task) -> None:
            if not task.cancelled() and task.exception() is not None:
                exc = task.exception()
                if isinstance(exc, SlowReader):
                    self.hang_up(f"client too slow: {exc}")
                else:
                    log.error("call %s: %s failed", self.id, task.get_name(), exc_info=exc)
                    self.hang_up("internal error")
        task.add_done_callback(done)
        self.tasks.append(task)
        return task

    async def close(self, *, code: int = 1000, message: bytes = b"") -> bool:
        """The server shuts down (the app's set of open conversations closes each one alike)."""
        self.hang_up(message.decode(errors="replace") or "closed by the server")
        if self.done is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(self.done)
        return True

    async def _teardown(self) -> None:
        try:
            self.session.close()   # the slot is free from here on
        finally:
            self.recorder.close("disconnect")
            self.track.stop()
            for task in self.tasks:
                task.cancel()
            for task in self.tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            await self.pc.close()

    # --- the peer ----------------------------------------------------------------------------------
    def _on_connection_state(self) -> None:
        self.wake.set()
        if self.pc.connectionState in ("failed", "closed"):
            self.hang_up(f"peer connection {self.pc.connectionState}")

    def _attach(self, channel: RTCDataChannel) -> None:
        if channel.label != EVENTS_LABEL or self.channel is not None:
            return   # another channel: not part of the API (nothing is read from it)
        self.channel = channel
        channel.on("message", self._on_message)
        channel.on("close", lambda: self.hang_up("the oai-events data channel closed"))
        if channel.readyState == "open":
            self.channel_open.set()
        else:
            channel.on("open", self.channel_open.set)

    def _on_message(self, data: str | bytes) -> None:
        self.last_heard = time.monotonic()
        try:
            if isinstance(data, str):
                self.recorder.message_in(data)
                self.session.handle_text(data)
            else:
                self.recorder.message_in(data)
                self.session.handle_binary(data)
        except TooManyBadMessages as exc:
            self.hang_up(str(exc))

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio":
            self.hears_audio = True
            self.wake.set()
            self._ends_on_failure(asyncio.create_task(self._read_audio(track), name="audio in"))

    async def _read_audio(self, track: MediaStreamTrack) -> None:
        """The user's audio: aiortc's decoded 20 ms frames (48 kHz) -> 24 kHz, with the time of lost packets
        filled by silence (`InputClock`: input frame k stays frame k) -> the session's 80 ms frames."""
        clock = self.input
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return   # the peer's track ended (the connection state says why)
            self.last_heard = time.monotonic()
            before, at_ms = clock.concealed_ms, clock.position_ms
            pcm = clock.frame(frame)
            if clock.concealed_ms > before:
                self.on_concealed(clock.concealed_ms - before)
                self.recorder.user_concealed(at_ms, clock.concealed_ms - before)
            self.session.feed_audio(pcm)

    async def _watch(self) -> None:
        """Ends a call whose peer never connected within `connect_s`, or whose audio stopped for `silence_s`.
        A timer, re-armed at each deadline (the audio's moves on as frames come) and on each state change."""
        while not self.ended.is_set():
            self.wake.clear()
            if self.pc.connectionState != "connected":
                deadline = self.created + self.connect_s if self.pc.connectionState in ("new", "connecting") else None
                why = f"no connection within {self.connect_s:g} s"
            else:
                deadline = self.last_heard + self.silence_s if self.hears_audio and self.silence_s > 0 else None
                why = f"no audio from the peer for {self.silence_s:g} s"
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return self.hang_up(why)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.wake.wait(), left)

    # --- to the peer ---------------------------------------------------------------------------------
    async def _send_loop(self) -> None:
        outbox = self.session.outbox
        while True:
            kind, payload, receipt = await outbox.get_with_receipt()
            if kind == "text":
                await self._send_event(payload)
            elif kind == "response":
                self._response_boundary(payload)
            elif kind == "audio":
                if self.target is not None and self.target.cancel_reason is None:   # a cut one's is not played
                    await self._send_audio(self.target, payload)
                if receipt is not None:
                    receipt(payload, None)

    async def _send_event(self, text: str) -> None:
        if not self.expects_channel:
            return   # an audio-only offer: nobody reads events
        await self.channel_open.wait()
        channel = self.channel
        if channel is None or channel.readyState != "open":
            return
        channel.send(text)
        if channel.bufferedAmount > MAX_BUFFERED_BYTES:
            self.hang_up("client too slow: stopped reading the oai-events channel")

    def _response_boundary(self, response: Response | None) -> None:
        ended, self.target = self.target, response
        if response is None and ended is not None and self.playing == ended.id:
            if ended.cancel_reason is not None:
                self.clear()   # a cancelled response: what it had queued is not played
            else:
                self.track.mark(ended.id)

    async def _send_audio(self, response: Response, pcm: tp.Any) -> None:
        if self.playing != response.id:
            # sent now, not queued: what the session queued after this frame (its transcript, even its
            # response.done when the track is behind) must not overtake it
            self.playing = response.id
            started = rt.event("output_audio_buffer.started", response_id=response.id)
            self.recorder.message_out(started)
            await self._send_event(started)
        response.sent_frames += 1
        await self.track.put(pcm)

    def _played(self, response_id: str) -> None:
        """The track sent the last audio of a response."""
        if self.playing == response_id:
            self.playing = None
        self.session.emit("output_audio_buffer.stopped", response_id=response_id)

    def clear(self) -> None:
        """`output_audio_buffer.clear`, or a cancelled response: the track's queue is dropped."""
        self.track.clear()
        if self.playing is not None:
            self.session.emit("output_audio_buffer.cleared", response_id=self.playing)
            self.playing = None
