"""WebRTC calls (docs/webrtc.md): OpenAI's flow end to end with aiortc as the client on loopback (client secret
-> `POST /v1/realtime/calls` -> events on the `oai-events` data channel -> audio both ways on the Opus track),
and every way a call is refused or ends: a wrong, spent or expired secret (401), a malformed offer (400), a
full server (503), a hang-up, a peer that vanishes and one that never connects free the slot. The tiny models
babble; the flow and the slots are what is checked."""

from __future__ import annotations

import asyncio
import email.utils
import json
import os
import signal
import subprocess
import sys
import typing as tp
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from aiortc import RTCPeerConnection

from duplex.audio import FRAME_SAMPLES, read_wav_mono24k, write_wav
from duplex.client.webrtc import CallRefused, RealtimeCallClient, client_secret, post_offer
from duplex.server.protocols.webrtc.secrets import ClientSecrets

from .conftest import espeak, start_server

REPO = Path(__file__).resolve().parents[1]
TOKEN = "s3cret"


@pytest.fixture(scope="module")
def rtc_server(tmp_path_factory):
    """One duplex slot, a token, a 1 s silence limit and a 3 s connect limit: refusals and ends are quick."""
    server = start_server(tmp_path_factory.mktemp("rtc"), "--slots", "1", "--token", TOKEN, "--no-cascade",
                          "--webrtc-silence-s", "1", "--start-timeout-s", "3")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def hello(tmp_path_factory) -> np.ndarray:
    return espeak("Hello there, how are you today?", tmp_path_factory.mktemp("rtc_hello") / "h.wav")


async def health(server) -> dict:
    async with aiohttp.ClientSession() as http:
        async with http.get(server.http_url + "/health") as response:
            return await response.json()


async def slots_free(server, engine: str = "duplex", timeout: float = 30.0) -> dict:
    """/health once no conversation holds a slot and no connection is open (read every 100 ms, at most `timeout`)."""
    async def free() -> dict:
        while True:
            state = await health(server)
            if state["engines"][engine]["active"] == 0 and state["connections"] == 0:
                return state
            await asyncio.sleep(0.1)
    return await asyncio.wait_for(free(), timeout)


async def offer_sdp() -> tuple[RTCPeerConnection, str]:
    """A real offer as a browser makes it: one audio track (sendrecv) and the oai-events channel."""
    pc = RTCPeerConnection()
    pc.addTransceiver("audio", direction="sendrecv")
    pc.createDataChannel("oai-events")
    await pc.setLocalDescription(await pc.createOffer())
    return pc, pc.localDescription.sdp


async def feed(call: RealtimeCallClient, pcm: np.ndarray) -> None:
    for start in range(0, len(pcm), FRAME_SAMPLES):
        await call.send_audio(pcm[start:start + FRAME_SAMPLES])


async def test_the_openai_flow_spoken_turn_on_the_track_transcribed_and_answered(cascade_server, hello):
    """A client secret carrying the session's configuration, then the call: the user speaks on the track, the
    server transcribes, answers on the track, and says so on the data channel."""
    session = {"type": "realtime", "instructions": "Be brief.", "audio": {"input": {
        "transcription": {"model": "whisper-1"}, "turn_detection": {"type": "server_vad"}}}}
    call = await RealtimeCallClient.connect(cascade_server.http_url, model="cascade", session=session)
    try:
        assert call.call_id and call.call_id.startswith("rtc_")
        created = await call.wait_for("session.created")
        assert created["session"]["model"] == "cascade"
        updated = await call.wait_for("session.updated")   # the secret's session, applied at the call's start
        assert updated["session"]["instructions"] == "Be brief."
        assert updated["session"]["audio"]["input"]["transcription"] is not None
        silence = np.zeros(FRAME_SAMPLES * 12, np.float32)
        await feed(call, np.concatenate([silence[:4800], hello, silence]))
        started = await call.wait_for("input_audio_buffer.speech_started")
        user = await call.wait_for("conversation.item.input_audio_transcription.completed", timeout=60)
        assert user["item_id"] == started["item_id"] and user["transcript"]
        response = (await call.wait_for("response.created", timeout=60))["response"]["id"]
        playing = await call.wait_for("output_audio_buffer.started", lambda e: e["response_id"] == response)
        done = await call.wait_for("response.done", lambda e: e["response"]["id"] == response, timeout=60)
        assert call.events.index(playing) < call.events.index(done)
        assert done["response"]["status"] == "completed"
        transcript = done["response"]["output"][0]["content"][0]["transcript"]
        assert transcript   # the stand-in LLM's reply, spoken by the tiny TTS
        stopped = await call.wait_for("output_audio_buffer.stopped", lambda e: e["response_id"] == response)
        assert call.events.index(stopped) > call.events.index(done)
        heard = np.concatenate([a.pcm for a in call.audio
                                if playing["received_at"] <= a.received_at <= stopped["received_at"]])
        assert len(heard) > 5 * FRAME_SAMPLES and np.abs(heard).max() > 0.01   # speech on the track, 24 kHz
        assert not call.of("response.output_audio.delta")   # WebRTC: audio on the track only
        assert not call.of("error"), call.of("error")
        assert await call.hang_up() == 200
        await slots_free(cascade_server, "cascade")
    finally:
        await call.close()


async def test_duplex_both_ways_and_output_audio_buffer_clear_cuts_the_response(rtc_server, speech):
    call = await RealtimeCallClient.connect(rtc_server.http_url, token=TOKEN, model="duplex")
    try:
        assert (await call.wait_for("session.created"))["session"]["model"] == "duplex"
        assert (await health(rtc_server))["engines"]["duplex"]["active"] == 1
        feeding = asyncio.ensure_future(feed(call, np.concatenate([speech, speech])))
        await call.wait_for("input_audio_buffer.speech_started")   # the user's audio came through the track
        response = (await call.wait_for("response.created"))["response"]["id"]
        await call.wait_for("output_audio_buffer.started", lambda e: e["response_id"] == response)
        await call.wait_until(lambda: any(np.abs(a.pcm).max() > 0.01 for a in call.audio), 30, "assistant audio")
        await call.send({"type": "output_audio_buffer.clear", "event_id": "clear-1"})
        done = await call.wait_for("response.done", lambda e: e["response"]["id"] == response)
        assert (done["response"]["status"], done["response"]["status_details"]["reason"]) == \
            ("cancelled", "client_cancelled")
        await call.wait_for("output_audio_buffer.cleared", lambda e: e["response_id"] == response)
        assert not call.of("error"), call.of("error")
        feeding.cancel()
    finally:
        await call.close()   # the peer connection closes: the server ends the call (no hang-up needed)
    await slots_free(rtc_server)


async def test_a_wrong_spent_or_missing_key_is_401_and_nothing_is_allocated(rtc_server):
    pc, sdp = await offer_sdp()
    try:
        async with aiohttp.ClientSession() as http:
            with pytest.raises(CallRefused) as refused:
                await client_secret(http, rtc_server.http_url, "wrong")
            assert (refused.value.status, refused.value.code) == (401, "unauthorized")
            for key in ("ek_no-such-secret", "wrong-token", None):
                with pytest.raises(CallRefused) as refused:
                    await post_offer(http, rtc_server.http_url, sdp, key, "duplex")
                assert (refused.value.status, refused.value.code) == (401, "unauthorized"), key
            state = await health(rtc_server)
            assert state["engines"]["duplex"]["active"] == 0 and state["connections"] == 0
            secret = (await client_secret(http, rtc_server.http_url, TOKEN, ttl_s=60))["value"]
        call = await RealtimeCallClient.connect(rtc_server.http_url, token=secret, use_client_secret=False)
        await call.hang_up()
        await call.close()
        await slots_free(rtc_server)
        async with aiohttp.ClientSession() as http:   # a secret is good for one call
            with pytest.raises(CallRefused) as refused:
                await post_offer(http, rtc_server.http_url, sdp, secret, "duplex")
            assert (refused.value.status, refused.value.code) == (401, "unauthorized")
        state = await health(rtc_server)
        assert state["engines"]["duplex"]["active"] == 0 and state["connections"] == 0
    finally:
        await pc.close()


def test_a_secret_expires_and_is_forgotten():
    now = [1000.0]
    store = ClientSecrets(clock=lambda: now[0])
    secret = store.issue(60, {"instructions": "x"})
    assert secret is not None and secret.value.startswith("ek_") and len(secret.value) > 40
    assert store.find(secret.value) is secret and store.find(secret.value + "x") is None
    now[0] += 59.9
    assert store.find(secret.value) is secret
    now[0] += 0.2
    assert store.find(secret.value) is None and len(store) == 0
    other = store.issue(60, None)
    assert other is not None and other.value != secret.value


async def test_malformed_offers_and_bodies_are_400_and_nothing_is_allocated(rtc_server):
    pc, sdp = await offer_sdp()
    no_ice = "\r\n".join(line for line in sdp.split("\r\n") if not line.startswith(("a=ice-ufrag", "a=ice-pwd")))
    url = rtc_server.http_url + "/v1/realtime/calls?model=duplex"
    headers = {"Authorization": f"Bearer {TOKEN}"}
    cases: list[tuple[tp.Any, str, str | None]] = [   # body, content type, the error's param
        ("hello", "application/sdp", "sdp"),
        ("", "application/sdp", "sdp"),
        ("v=0\r\nm=audio\r\n", "application/sdp", "sdp"),
        ("v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n", "application/sdp", "sdp"),
        (no_ice, "application/sdp", "sdp"),
        (sdp, "text/plain", "content-type"),
    ]
    try:
        async with aiohttp.ClientSession() as http:
            for body, content_type, param in cases:
                async with http.post(url, data=body, headers={**headers, "Content-Type": content_type}) as response:
                    error = (await response.json())["error"]
                    assert (response.status, error["code"], error["param"]) == (400, "bad_message", param), body[:40]
                    assert error["message"]
            form = aiohttp.FormData(default_to_multipart=True)   # OpenAI's multipart form
            form.add_field("sdp", sdp)
            form.add_field("session", "{not json")
            async with http.post(url, data=form, headers=headers) as response:
                assert response.status == 400 and (await response.json())["error"]["param"] == "session"
        state = await health(rtc_server)
        assert state["engines"]["duplex"]["active"] == 0 and state["connections"] == 0
    finally:
        await pc.close()


async def test_a_full_server_refuses_a_call_as_it_refuses_a_socket(rtc_server):
    # the token itself as the key, the session in OpenAI's multipart form (`sdp` and `session` fields)
    first = await RealtimeCallClient.connect(rtc_server.http_url, token=TOKEN, model="duplex", use_client_secret=False,
                                             session={"type": "realtime", "audio": {"output": {"voice": "alloy"}}})
    try:
        updated = await first.wait_for("session.updated")
        assert updated["session"]["audio"]["output"]["voice"] is None   # an OpenAI voice: the server's default
        with pytest.raises(CallRefused) as refused:
            await RealtimeCallClient.connect(rtc_server.http_url, token=TOKEN, model="duplex")
        assert (refused.value.status, refused.value.code) == (503, "capacity")
        async with aiohttp.ClientSession() as http:   # the socket's refusal says the same
            async with http.ws_connect(rtc_server.http_url + "/v1/realtime?model=duplex",
                                       headers={"Authorization": f"Bearer {TOKEN}"}) as ws:
                error = json.loads(await ws.receive_str(timeout=10))["error"]
        assert error["code"] == "capacity" and error["message"] == refused.value.message
        assert (await health(rtc_server))["connections"] == 1   # the refused call holds nothing
    finally:
        assert await first.hang_up() == 200
        await first.close()
    await slots_free(rtc_server)


async def test_a_peer_that_vanishes_frees_its_slot(rtc_server):
    """A client process killed mid-call (no goodbye on any layer): its audio stops, the call ends."""
    script = ("import asyncio, sys, numpy as np\n"
              "from duplex.client.webrtc import RealtimeCallClient\n"
              "async def main():\n"
              f"    call = await RealtimeCallClient.connect({rtc_server.http_url!r}, token={TOKEN!r}, model='duplex')\n"
              "    await call.wait_for('session.created')\n"
              "    print('connected', flush=True)\n"
              "    await asyncio.Event().wait()\n"
              "asyncio.run(main())\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = await asyncio.create_subprocess_exec(sys.executable, "-c", script, stdout=subprocess.PIPE, env=env)
    try:
        assert child.stdout is not None
        assert (await asyncio.wait_for(child.stdout.readline(), 60)).strip() == b"connected"
        state = await health(rtc_server)
        assert state["engines"]["duplex"]["active"] == 1 and state["connections"] == 1
        child.send_signal(signal.SIGKILL)
        await child.wait()
        await slots_free(rtc_server)   # within the 1 s silence limit, plus a check's period
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()


async def test_a_peer_that_never_connects_is_dropped_after_the_connect_limit(rtc_server):
    pc, sdp = await offer_sdp()
    try:
        async with aiohttp.ClientSession() as http:
            answer, location = await post_offer(http, rtc_server.http_url, sdp, TOKEN, "duplex")
        assert answer.startswith("v=0") and location.startswith("/v1/realtime/calls/rtc_")
        assert (await health(rtc_server))["engines"]["duplex"]["active"] == 1
    finally:
        await pc.close()   # the answer is never applied: no ICE, no DTLS
    await slots_free(rtc_server)   # --start-timeout-s 3


async def test_the_python_client_cli_over_webrtc(cascade_server, hello, tmp_path):
    """`duplex client --transport webrtc`: a spoken turn from a WAV file, the events as JSON lines, the summary,
    and the assistant's audio written out."""
    wav, out = tmp_path / "hello.wav", tmp_path / "reply.wav"
    write_wav(str(wav), hello)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "duplex", "client", "--transport", "webrtc", "--url", cascade_server.http_url,
        "--mode", "cascade", "--input", str(wav), "--transcribe-user", "--json", "--output", str(out),
        "--reply-timeout", "60", stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    stdout, stderr = await asyncio.wait_for(child.communicate(), 180)
    assert child.returncode == 0, stderr.decode()
    lines = [json.loads(line) for line in stdout.decode().splitlines()]
    types = [line["type"] for line in lines]
    assert types[0] == "session.created" and types[-1] == "client_summary"
    assert "conversation.item.input_audio_transcription.completed" in types   # --transcribe-user, as a session
    assert types.index("output_audio_buffer.started") < types.index("response.done") < \
        types.index("output_audio_buffer.stopped")
    summary = lines[-1]
    assert summary["transport"] == "webrtc" and summary["mode"] == "cascade" and summary["responses"] >= 1
    assert summary["frames_sent"] >= len(hello) // FRAME_SAMPLES and summary["frames_received"] > 0
    assert np.abs(read_wav_mono24k(str(out))).max() > 0.01


async def test_a_call_is_recorded_as_a_socket_is(tmp_path_factory, speech):
    """`--record`: a call's folder says endpoint `webrtc`, keeps the events both ways and the audio it carried."""
    folder = tmp_path_factory.mktemp("rtc_rec")
    server = start_server(folder, "--slots", "1", "--no-cascade", "--record", str(folder / "rec"))
    try:
        call = await RealtimeCallClient.connect(server.http_url, model="duplex")
        try:
            await call.wait_for("session.created")
            await call.send({"type": "session.update", "session": {"type": "realtime"}})
            await call.wait_for("session.updated")
            await feed(call, speech)
            await call.wait_for("input_audio_buffer.speech_started")
            await call.hang_up()
        finally:
            await call.close()
        await slots_free(server)
        async with aiohttp.ClientSession() as http:
            async with http.get(server.http_url + "/recordings") as response:
                listed = (await response.json())["recordings"]
    finally:
        server.stop()
    assert len(listed) == 1
    [kept] = [p for p in (folder / "rec").iterdir() if p.is_dir()]
    meta = json.loads((kept / "meta.json").read_text())
    assert meta["endpoint"] == "webrtc" and meta["complete"] and meta["mode"] == "duplex"
    events = [json.loads(line) for line in (kept / "events.jsonl").read_text().splitlines()]
    sent = [e["msg"]["type"] for e in events if e.get("dir") == "out" and e.get("kind") == "text"]
    assert "session.created" in sent and "input_audio_buffer.speech_started" in sent
    assert any("session.update" in str(e.get("msg")) for e in events if e.get("dir") == "in")
    assert wav_seconds(kept / "audio.wav") >= len(speech) / 24000 * 0.5   # the user's audio, as the engine took it


def wav_seconds(path: Path) -> float:
    import wave

    with wave.open(str(path)) as w:
        return w.getnframes() / w.getframerate()


async def test_client_secret_requests_are_checked_and_answered_as_openai_shapes_them(rtc_server):
    url = rtc_server.http_url + "/v1/realtime/client_secrets"
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession() as http:
        for body, param in [({"expires_after": {"anchor": "created_at", "seconds": 5}}, "expires_after.seconds"),
                            ({"expires_after": {"anchor": "last_used", "seconds": 60}}, "expires_after"),
                            ({"session": {"type": "realtime", "bogus": 1}}, "session.bogus"),
                            ({"sessions": {}}, "sessions")]:
            async with http.post(url, json=body, headers=headers) as response:
                error = (await response.json())["error"]
                assert (response.status, error["code"], error["param"]) == (400, "bad_message", param), body
        async with http.post(url, data="{oops", headers=headers) as response:
            assert response.status == 400
        session = {"type": "realtime", "instructions": "Be brief."}
        async with http.post(url, json={"expires_after": {"anchor": "created_at", "seconds": 120},
                                        "session": session}, headers=headers) as response:
            secret = await response.json()
        async with http.post(rtc_server.http_url + "/v1/realtime/calls/rtc_nope/hangup") as response:
            assert response.status == 404 and (await response.json())["error"]["code"] == "not_found"
        async with http.get(rtc_server.http_url + "/health") as response:
            now = response.headers["Date"]
    assert secret["value"].startswith("ek_") and secret["session"] == session
    issued = email.utils.parsedate_to_datetime(now).timestamp()
    assert issued + 110 <= secret["expires_at"] <= issued + 130   # 120 s from now, by the server's own clock


def one_ipv4_udp_candidate(sdp: str, seen: list[str]) -> str:
    """The SDP with one IPv4 UDP host candidate per m-line (a benchmark's relay rewrites it the same way)."""
    lines, kept = [], False
    for line in sdp.split("\r\n"):
        if line.startswith("m="):
            kept = False
        if line.startswith("a=candidate:"):
            parts = line.split()
            if kept or parts[2].lower() != "udp" or ":" in parts[4]:
                continue
            kept = True
            seen.append(parts[4])
        lines.append(line)
    return "\r\n".join(lines)


async def test_the_client_can_rewrite_the_sdp_both_ways(rtc_server, speech):
    """`offer_filter` / `answer_filter` (what the packet-loss benchmark's relay uses): with one candidate left
    each way the call connects and audio flows."""
    offered: list[str] = []
    answered: list[str] = []
    call = await RealtimeCallClient.connect(rtc_server.http_url, token=TOKEN, model="duplex",
                                            offer_filter=lambda sdp: one_ipv4_udp_candidate(sdp, offered),
                                            answer_filter=lambda sdp: one_ipv4_udp_candidate(sdp, answered))
    try:
        assert len(offered) >= 1 and len(answered) >= 1
        await call.wait_for("session.created")
        await feed(call, speech[: 24000 * 2])
        await call.wait_for("input_audio_buffer.speech_started")
        await call.hang_up()
    finally:
        await call.close()
    await slots_free(rtc_server)
