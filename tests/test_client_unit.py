"""Server-free tests of the Python client: URL building, alignment, pacing, CLI parsing and printing."""

from __future__ import annotations

import argparse
import io
import sys
import types

import numpy as np
import pytest
from yarl import URL

from duplex.client import cli as client_cli
from duplex.client import (AudioChunk, Event, FramePacer, HandshakeRefused, ServerClosed, align_assistant_audio,
                           build_ws_url, split_frames)
from duplex.audio import FRAME_SAMPLES, SAMPLE_RATE
from duplex.client.cli import build_config, cascade_reply_state
from duplex.client.report import HumanPrinter, Transfer, frame_turnaround_ms, summarize


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="duplex")
    client_cli.register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["client", *argv])


# ---- URL building ---------------------------------------------------------------------------------

@pytest.mark.parametrize("given, expected_base", [
    ("http://127.0.0.1:8998", "ws://127.0.0.1:8998/ws"),
    ("http://127.0.0.1:8998/", "ws://127.0.0.1:8998/ws"),
    ("https://example.org", "wss://example.org/ws"),
    ("ws://h:1/ws", "ws://h:1/ws"),
    ("wss://h:1/custom/ws", "wss://h:1/custom/ws"),
    ("ws://h:1", "ws://h:1/ws"),
    ("localhost:8998", "ws://localhost:8998/ws"),
])
def test_ws_url_scheme_and_path(given: str, expected_base: str) -> None:
    url, headers = build_ws_url(given)
    parsed = URL(url)
    assert str(parsed.with_query(None)) == expected_base
    assert dict(parsed.query) == {"codec": "opus"}
    assert headers == {}


def test_ws_url_query_carries_mode_codec_token_and_keeps_existing_params() -> None:
    url, headers = build_ws_url("http://h:1?extra=1", mode="cascade", codec="pcm16", token="s3cret")
    assert URL(url).path == "/ws"
    assert dict(URL(url).query) == {"extra": "1", "mode": "cascade", "codec": "pcm16", "token": "s3cret"}
    assert headers == {}


def test_ws_url_token_in_header_stays_out_of_the_url() -> None:
    url, headers = build_ws_url("http://h:1", token="s3cret", token_in_header=True)
    assert "token" not in URL(url).query
    assert headers == {"Authorization": "Bearer s3cret"}


@pytest.mark.parametrize("kwargs", [{"mode": "both"}, {"codec": "mp3"}])
def test_ws_url_rejects_unknown_mode_or_codec(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        build_ws_url("http://h:1", **kwargs)


def test_ws_url_rejects_unknown_scheme() -> None:
    with pytest.raises(ValueError, match="scheme"):
        build_ws_url("ftp://h:1")


def test_refused_upgrade_is_a_server_closed_that_mentions_the_token() -> None:
    exc = HandshakeRefused(401, "Invalid response status")
    assert isinstance(exc, ServerClosed)
    assert exc.code == 401
    assert "token" in str(exc) and "401" in str(exc)
    assert "token" not in str(HandshakeRefused(503, "Service Unavailable"))


# ---- framing, pacing, alignment -------------------------------------------------------------------

def test_split_frames_pads_the_last_frame_with_silence() -> None:
    pcm = np.arange(FRAME_SAMPLES * 2 + 5, dtype=np.float32)
    frames = split_frames(pcm)
    assert [len(f) for f in frames] == [FRAME_SAMPLES] * 3
    np.testing.assert_array_equal(np.concatenate(frames)[:len(pcm)], pcm)
    assert not frames[2][5:].any()
    assert len(split_frames(np.zeros(FRAME_SAMPLES * 2))) == 2
    assert split_frames(np.zeros(0)) == []


def test_pacer_uses_an_absolute_schedule_so_lateness_does_not_accumulate() -> None:
    now = [100.0]
    pacer = FramePacer(start=100.0, clock=lambda: now[0])
    assert pacer.due(25) == pytest.approx(100.0 + 25 * FRAME_SAMPLES / SAMPLE_RATE)
    now[0] = 100.0 + 0.05  # frame 1 is due at +0.08: wait only the remainder
    assert pacer.delay(1) == pytest.approx(0.03)
    now[0] = 100.0 + 0.5  # we fell behind: frames already due go out at once ...
    assert pacer.delay(3) == 0.0
    assert pacer.delay(7) == pytest.approx(0.06)  # ... and the schedule stays anchored to start


def chunk(value: float, samples: int, at: float, seq: int = 0) -> AudioChunk:
    return AudioChunk(pcm=np.full(samples, value, dtype=np.float32), received_at=at, seq=seq)


def test_duplex_alignment_lays_frames_end_to_end_whatever_their_arrival() -> None:
    # Arrival times are deliberately late and uneven: duplex alignment must ignore them.
    chunks = [chunk(0.1, 1920, at=5.0), chunk(0.0, 0, at=5.1), chunk(0.2, 1920, at=9.0)]
    out = align_assistant_audio(chunks, by_arrival=False, stream_start=0.0, min_samples=3 * 1920)
    assert out.dtype == np.float32 and len(out) == 3 * 1920
    assert np.all(out[:1920] == np.float32(0.1))
    assert np.all(out[1920:3840] == np.float32(0.2))
    assert not out[3840:].any()


def test_cascade_alignment_places_chunks_at_arrival_without_overlap() -> None:
    start = 10.0
    chunks = [
        chunk(0.1, 2400, at=start + 1.0),  # 1 s after stream start -> sample 24000
        chunk(0.2, 2400, at=start + 1.01),  # arrives while the first still plays -> right after it
        chunk(0.3, 100, at=start + 2.0),  # after a gap -> at its arrival
    ]
    out = align_assistant_audio(chunks, by_arrival=True, stream_start=start, min_samples=10)
    assert not out[:24000].any()
    assert np.all(out[24000:26400] == np.float32(0.1))
    assert np.all(out[26400:28800] == np.float32(0.2))
    assert not out[28800:48000].any()
    assert np.all(out[48000:48100] == np.float32(0.3))
    assert len(out) == 48100  # longer than min_samples: nothing is cut


def test_cascade_alignment_clamps_chunks_that_arrive_before_the_stream_start() -> None:
    out = align_assistant_audio([chunk(0.5, 10, at=0.0)], by_arrival=True, stream_start=1.0)
    assert np.all(out == np.float32(0.5)) and len(out) == 10


def test_frame_turnaround_pairs_input_frame_k_with_output_frame_k() -> None:
    sent = [0.0, 0.08, 0.16]
    received = [chunk(0, 1920, at=0.2, seq=0), chunk(0, 1920, at=0.3, seq=1)]
    assert frame_turnaround_ms(sent, received) == pytest.approx([200.0, 220.0])


def test_summary_reports_turnaround_only_for_duplex_and_latency_from_metrics() -> None:
    events = [Event("metrics", {"type": "metrics", "response_latency_ms": v, "frames_dropped": 2}, 0.0)
              for v in (100, 300)] + [Event("error", {"type": "error", "code": "bad_audio"}, 0.0)]
    fake = types.SimpleNamespace(events=events, binary_messages=2,
                                 audio=[chunk(0, 1920, at=0.1), chunk(0, 1920, at=0.2)])
    transfer = Transfer(sent_at=[0.0, 0.08, 0.16])
    duplex = summarize(fake, transfer, "duplex", 1.234)
    assert duplex["frames_sent"] == 3 and duplex["frames_received"] == 2
    assert duplex["frame_turnaround_ms"]["p50"] == pytest.approx(110.0)
    assert duplex["response_latency_ms"]["p50"] == pytest.approx(200.0)
    assert duplex["response_latency_ms"]["max"] == pytest.approx(300.0)
    assert duplex["responses"] == 2 and duplex["frames_dropped"] == 2 and duplex["errors"] == 1
    assert duplex["llm_tokens"] is None                   # no turn reported LLM tokens (the duplex model)
    assert summarize(fake, transfer, "cascade", 1.0)["frame_turnaround_ms"] is None
    for i in range(2):                                    # cascade turns: their LLM tokens, summed
        events[i].data.update(input_tokens=40 + i, output_tokens=7 * (i + 1))
    assert summarize(fake, transfer, "cascade", 1.0)["llm_tokens"] == {"input": 81, "output": 21}


# ---- CLI arguments --------------------------------------------------------------------------------

ALL_FLAGS = ["--url", "--mode", "--codec", "--token", "--input", "--mic", "--output", "--fast", "--tail-seconds",
             "--temperature", "--text-temperature", "--top-k", "--text-top-k", "--seed", "--system-prompt",
             "--voice", "--transcribe-user", "--text", "--json"]


def test_help_mentions_every_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse("--help")
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    missing = [flag for flag in ALL_FLAGS if flag not in text]
    assert not missing


def test_defaults() -> None:
    args = parse("--input", "a.wav")
    assert args.func is client_cli.run
    assert args.url == "http://127.0.0.1:8998"
    assert args.codec == "opus" and args.mode is None and args.tail_seconds == 2.0
    assert not (args.fast or args.json or args.mic or args.transcribe_user)
    assert build_config(args) is None


def test_sampling_flags_become_the_start_config() -> None:
    args = parse("--input", "a.wav", "--temperature", "0.7", "--text-temperature", "0", "--top-k", "50",
                 "--text-top-k", "25", "--seed", "42", "--system-prompt", "Be brief.", "--voice", "v1",
                 "--transcribe-user")
    assert build_config(args) == {
        "temperature": 0.7, "text_temperature": 0.0, "top_k": 50, "text_top_k": 25, "seed": 42,
        "system_prompt": "Be brief.", "voice": "v1", "transcribe_user": True,
    }


@pytest.mark.parametrize("argv", [
    ["--mode", "fast"], ["--codec", "mp3"], ["--input", "a.wav", "--mic"], ["--top-k", "many"],
])
def test_bad_arguments_are_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse(*argv)
    assert exit_info.value.code == 2


def test_run_needs_an_audio_or_text_source(capsys: pytest.CaptureFixture[str]) -> None:
    assert client_cli.run(parse()) == 2
    assert "--input" in capsys.readouterr().err


def test_run_reports_an_unreadable_input_file(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.wav"
    assert client_cli.run(parse("--input", str(missing))) == 2
    assert "nope.wav" in capsys.readouterr().err


def test_mic_without_sounddevice_explains_what_to_install(monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "sounddevice", None)  # makes `import sounddevice` fail
    assert client_cli.run(parse("--mic")) == 2
    err = capsys.readouterr().err
    assert "sounddevice" in err and "PortAudio" in err


def test_mic_without_an_input_device_says_so(monkeypatch, capsys) -> None:
    def no_input(kind: str) -> None:
        raise ValueError("No input device matching ''")

    monkeypatch.setitem(sys.modules, "sounddevice", types.SimpleNamespace(query_devices=no_input))
    assert client_cli.run(parse("--mic")) == 2
    assert "no microphone" in capsys.readouterr().err


# ---- human output ---------------------------------------------------------------------------------

def feed(printer: HumanPrinter, *messages: dict) -> None:
    for data in messages:
        printer.on_event(Event(data["type"], data, 0.0))


TRANSCRIPT = [
    {"type": "partial_transcript", "role": "user", "content": "hel", "start_ms": 0},
    {"type": "final_transcript", "role": "user", "content": "hello", "start_ms": 0, "end_ms": 400},
    {"type": "llm_response", "content": "Hi", "is_complete": False},
    {"type": "llm_response", "content": " there.", "is_complete": True},
    {"type": "error", "code": "unsupported", "message": "no text in duplex"},
]


def test_human_output_without_tty_prints_only_finals_and_whole_replies() -> None:
    out, err = io.StringIO(), io.StringIO()
    feed(HumanPrinter(tty=False, out=out, err=err), *TRANSCRIPT)
    assert out.getvalue().splitlines() == ["user: hello", "assistant (text): Hi there."]
    assert "\r" not in out.getvalue()
    assert err.getvalue() == "error [unsupported]: no text in duplex\n"


def test_human_output_on_a_tty_rewrites_partials_in_place() -> None:
    out = io.StringIO()
    feed(HumanPrinter(tty=True, out=out, err=io.StringIO()), *TRANSCRIPT[:2])
    text = out.getvalue()
    assert text.startswith("\r\033[Kuser… hel")
    assert text.endswith("\r\033[Kuser: hello\n")  # the partial line is cleared, then the final printed


def test_human_output_flushes_unfinished_assistant_text() -> None:
    out = io.StringIO()
    printer = HumanPrinter(tty=False, out=out, err=io.StringIO())
    feed(printer, {"type": "llm_response", "content": "cut", "is_complete": False})
    assert out.getvalue() == ""
    printer.flush()
    assert out.getvalue() == "assistant (text): cut\n"


# ---- when a cascade reply is over -----------------------------------------------------------------

@pytest.mark.parametrize("types, state", [
    ([], "none"),
    (["status", "partial_transcript"], "none"),
    (["final_transcript", "llm_status", "llm_response"], "waiting"),
    (["llm_status", "tts_start"], "speaking"),
    (["llm_status", "tts_start", "tts_end"], "ended"),
    (["llm_status", "tts_start", "tts_stop"], "ended"),
    (["llm_status", "error"], "failed"),
    (["llm_status", "tts_start", "tts_stop", "llm_status"], "waiting"),          # barge-in: a new turn
    (["llm_status", "tts_start", "tts_end", "llm_status", "tts_start"], "speaking"),
])
def test_cascade_reply_state_follows_the_latest_turn(types, state) -> None:
    assert cascade_reply_state([Event(t, {"type": t}, 0.0) for t in types]) == state


def test_reply_timeout_flag() -> None:
    assert parse("--input", "a.wav").reply_timeout == 30.0
    assert parse("--input", "a.wav", "--reply-timeout", "5").reply_timeout == 5.0
