"""The browser page over WebRTC: headless Chromium runs the page's own WebRTC path against the real server.

tests/browser/drive_page.mjs opens `/?autostart=1&transport=webrtc&mode=duplex&transcribe_user=1`: the
page gets a client secret, calls `/v1/realtime/calls` with the fake microphone's track and the `oai-events`
channel, and plays the answer's track. Checked: RTP audio both ways and samples played (Chromium's
getStats), the Realtime transcript events shown as the page's transcript, Interrupt (`response.cancel` +
`output_audio_buffer.clear`) answered by the server, the ICE round trip shown, the slot freed after Stop
(hang-up) and after the page simply goes away. Chromium runs with `--disable-features=
WebRtcHideLocalIpsWithMdns` so that its host candidates are IPs aiortc can reach (tests/browser/chromium.mjs).
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import time
import urllib.request

import pytest

from .test_browser_client import (BROWSER_DIR, _health, _idle_health, browser_required, drive_page,  # noqa: F401
                                  needs_browser, speech_wav)


def _wait_duplex_idle(http_url: str, bound_s: float) -> dict:
    """/health once no duplex slot is held, or fails past `bound_s` (the call's own limits end it sooner)."""
    deadline = time.monotonic() + bound_s
    while (state := _health(http_url))["engines"]["duplex"]["active"] != 0:
        assert time.monotonic() < deadline, f"a duplex slot is still held after {bound_s} s: {state}"
        time.sleep(0.1)
    return state


@needs_browser
def test_browser_client_over_webrtc(browser_required, tiny_server, speech_wav, tmp_path):  # noqa: F811
    _idle_health(tiny_server.http_url)
    summary, context = drive_page(tiny_server.http_url, speech_wav, tmp_path / "webrtc.png", "--mode", "duplex",
                                  "--transport", "webrtc", "--query", "transcribe_user=1")
    assert summary["ok"], f"the page failed at step {summary['step']!r}: {summary.get('error')}\n{context}"
    assert not summary["pageErrors"] and not summary["httpErrors"], context

    # Audio both ways over RTP, and played: Chromium's own counters (getStats), not the page's guess.
    flowing = summary["flowing"]
    assert flowing["transport"] == "webrtc" and flowing["connected"] and flowing["started"], context
    assert flowing["mode"] == "duplex" and flowing["errors"] == [], context
    rtc = flowing["rtc"]
    assert rtc["packetsSent"] > 0 and rtc["packetsReceived"] > 0 and rtc["samplesReceived"] > 0, context
    assert flowing["samplesPlayed"] > 0, context   # media-playout: what the speakers were given
    assert flowing["rtcEvents"]["session.created"] == 1, context
    # The round trip is the ICE candidate pair's (STUN consent checks): finite, non-negative, shown.
    assert isinstance(rtc["rttMs"], (int, float)) and math.isfinite(rtc["rttMs"]) and rtc["rttMs"] >= 0, context
    assert "WebRTC" in summary["dom"]["transport"] and "ICE" in summary["dom"]["rtt"], context

    # Transcripts: the Realtime transcript events became the page's transcript and assistant text.
    stopped = summary["stopped"]
    events = stopped["rtcEvents"]
    deltas = (events.get("response.output_audio_transcript.delta", 0)
              + events.get("conversation.item.input_audio_transcription.delta", 0))
    assert deltas > 0 and stopped["transcripts"] >= deltas, context
    assert summary["dom"]["transcriptItems"] > 0, context
    assert summary["dom"]["assistantTextChars"] == flowing["llmChars"] or stopped["llmChars"] > 0, context

    # Interrupt while the assistant spoke: the server cut the response and cleared the track's audio.
    interrupt = summary["interrupt"]
    assert interrupt["acksAfter"] > interrupt["acksBefore"], context
    after, before = interrupt["eventsAfter"], interrupt["eventsBefore"]
    assert after.get("output_audio_buffer.cleared", 0) > before.get("output_audio_buffer.cleared", 0), context
    assert interrupt["statusAfter"] == "listening", context

    # Stop hangs up: the page shows it stopped, without an error, and the server freed the slot.
    assert stopped["lastStatus"] == "stopped" and not stopped["started"] and stopped["errors"] == [], context
    assert summary["healthAfterStop"]["engines"]["duplex"]["active"] == 0, context

    # The second call's page went away without hanging up: the server notices (the peer connection or the
    # data channel closes; at the latest its audio stops, --webrtc-silence-s 10) and frees the slot.
    assert summary["vanished"]["started"], context
    _wait_duplex_idle(tiny_server.http_url, bound_s=60)


@needs_browser
def test_browser_webrtc_explains_a_wrong_token(browser_required, small_server, speech_wav, tmp_path):  # noqa: F811
    """With a token on the server, the page trades the token the user typed for a client secret; a wrong one is
    refused there (401) and the page says so, before any call is made."""
    summary, context = drive_page(small_server.http_url, speech_wav, tmp_path / "token.png", "--transport", "webrtc",
                                  "--scenario", "refused", "--token", "not-the-token")
    assert summary["ok"], context
    refused = summary["refused"]
    assert [e["code"] for e in refused["errors"]] == ["unauthorized"], context
    assert "token" in summary["dom"]["banner"], context
    assert not refused["connected"] and not refused["started"] and refused["rtcEvents"] == {}, context
    assert summary["dom"]["startEnabled"], context


@pytest.mark.skipif(shutil.which("node") is None, reason="node is missing")
def test_page_modules():
    """client/realtime-events.js, settings.js's keyOfError and webrtc.js's realtimeSession under node:test."""
    run = subprocess.run(["node", "--test", str(BROWSER_DIR / "page_modules.test.mjs")],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]


@needs_browser
def test_browser_webrtc_with_the_servers_token(browser_required, small_server, speech_wav, tmp_path):  # noqa: F811
    """A server with --token: the user's token goes to /v1/realtime/client_secrets only; the call itself carries
    the one-call secret, and the conversation runs."""
    _wait_duplex_idle(small_server.http_url, bound_s=60)
    summary, context = drive_page(small_server.http_url, speech_wav, tmp_path / "token-ok.png", "--mode", "duplex",
                                  "--transport", "webrtc", "--token", "s3cret")
    assert summary["ok"], f"the page failed at step {summary['step']!r}: {summary.get('error')}\n{context}"
    assert summary["flowing"]["errors"] == [] and summary["flowing"]["rtc"]["packetsReceived"] > 0, context
    calls = [(r["method"], r["path"].rsplit("/", 1)[-1] if "/calls/" in r["path"] else r["path"], r["auth"])
             for r in summary["realtimeRequests"]]
    assert calls[:3] == [("POST", "/v1/realtime/client_secrets", "token"), ("POST", "/v1/realtime/calls", "client secret"),
                         ("POST", "hangup", "none")], calls
    _wait_duplex_idle(small_server.http_url, bound_s=60)


@needs_browser
def test_browser_webrtc_with_a_client_secret_in_the_url(browser_required, tiny_server, speech_wav, tmp_path):  # noqa: F811
    """`?client_secret=ek_…` (minted by the operator's backend): the page asks for no secret, calls with that one,
    and sends its settings as a `session.update` once the channel opens (here: user transcription on)."""
    _idle_health(tiny_server.http_url)
    request = urllib.request.Request(tiny_server.http_url + "/v1/realtime/client_secrets", data=b"{}", method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        secret = json.load(response)["value"]
    summary, context = drive_page(tiny_server.http_url, speech_wav, tmp_path / "secret.png", "--mode", "duplex",
                                  "--transport", "webrtc", "--query", f"client_secret={secret}&transcribe_user=1", "--no-vanish")
    assert summary["ok"], f"the page failed at step {summary['step']!r}: {summary.get('error')}\n{context}"
    kinds = [(r["path"].rsplit("/", 1)[-1], r["auth"]) for r in summary["realtimeRequests"]]
    assert kinds[:2] == [("calls", "client secret"), ("hangup", "none")], kinds   # no client_secrets request
    events = summary["stopped"]["rtcEvents"]
    assert events.get("session.updated", 0) >= 1, context   # the settings' session.update, answered
    assert summary["stopped"]["rtcSession"]["audio"]["input"]["transcription"] is not None, context   # it is on
