"""The page's conversation settings in headless Chromium against a persona server (tiny-personaplex + cascade).

tests/browser/drive_settings.mjs sets a system prompt, a voice and sampling keys on the page, by a link and
by the form, and the test checks what the server received: the config in the recording's meta.json
(`--record`), not the page's own DOM. Then: a reload restores the settings (localStorage), the address
bar reproduces them, a refused value is shown beside its field, and each mode offers its own voices.
Skips like tests/test_browser_client.py without Chromium or the driver.
"""

from __future__ import annotations

import json
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from .conftest import start_server
from .test_browser_client import BROWSER_DIR, browser_required, needs_browser, speech_wav  # noqa: F401 (fixtures)

DRIVER = BROWSER_DIR / "drive_settings.mjs"


@pytest.fixture(scope="module")
def persona_page_server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("persona-page")
    server = start_server(folder, "--preset", "tiny-personaplex", "--slots", "2", "--cascade-slots", "1",
                          "--record", str(folder / "recordings"))
    server.record_dir = folder / "recordings"
    yield server
    server.stop()


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


def _recordings(record_dir: Path, endpoint: str) -> list[tuple[dict, list[dict]]]:
    """Each conversation of `endpoint`, in the order they started, from the recordings (the server's own
    account): its config (a seed the server drew left out) and the messages in and out (events.jsonl). A
    WebRTC call's settings come as a `session.update` after it starts, which for a duplex persona starts a
    new segment: its last segment is the one that ran."""
    metas = sorted(((json.loads(p.read_text()), p.parent) for p in record_dir.glob("*/meta.json")),
                   key=lambda m: (m[0]["started_unix"], m[0]["segment"]))
    last: dict[str, tuple[dict, Path]] = {}
    for meta, folder in metas:
        if meta["endpoint"] == endpoint:
            last[meta["session_id"]] = (meta, folder)
    return [({k: v for k, v in m["config"].items() if k != "seed" or not m["seed_drawn_by_server"]},
             [json.loads(line) for line in (folder / "events.jsonl").read_text().splitlines()])
            for m, folder in last.values()]


def _recorded_configs(record_dir: Path, endpoint: str) -> list[dict]:
    return [config for config, _ in _recordings(record_dir, endpoint)]


def drive(server, wav: Path, *args: str) -> tuple[dict, str]:
    run = subprocess.run(["node", str(DRIVER), "--url", server.http_url, "--wav", str(wav), "--timeout-ms", "90000",
                          *args], capture_output=True, text=True, timeout=400, cwd=BROWSER_DIR)
    try:
        summary = json.loads(run.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"drive_settings.mjs printed no JSON (rc {run.returncode}):\n{run.stdout}\n{run.stderr}")
    return summary, json.dumps(summary, indent=1)[:8000]


def test_config_describes_what_each_engine_takes(persona_page_server, tiny_server) -> None:
    persona = _get(persona_page_server.http_url + "/config")
    health = _get(persona_page_server.http_url + "/health")
    assert persona["engines"]["duplex"]["voices"] == health["engines"]["duplex"]["voices"]
    assert {"system_prompt", "voice"} <= set(persona["engines"]["duplex"]["start"])
    assert not {"system_prompt", "voice"} & set(persona["engines"]["duplex"]["configure"])   # at `start` only
    assert persona["engines"]["cascade"]["voices"] and persona["engines"]["cascade"]["default_voice"]
    assert persona["keys"]["temperature"] == {**persona["keys"]["temperature"], "type": "number", "low": 0, "high": 5}
    # A model without persona support does not offer a prompt or a voice.
    plain = _get(tiny_server.http_url + "/config")["engines"]["duplex"]
    assert not {"system_prompt", "voice"} & set(plain["start"]) and plain["voices"] == []


@needs_browser
@pytest.mark.parametrize("transport", ["websocket", "webrtc"])
def test_page_settings_reach_the_server(browser_required, persona_page_server, speech_wav, transport) -> None:  # noqa: F811
    server = persona_page_server
    config = _get(server.http_url + "/config")
    duplex_voices, cascade_voices = config["engines"]["duplex"]["voices"], config["engines"]["cascade"]["voices"]
    endpoint, rtc = ("webrtc", True) if transport == "webrtc" else ("ws", False)
    already = len(_recorded_configs(server.record_dir, endpoint))
    summary, context = drive(server, speech_wav, "--transport", transport, "--duplex-voice", duplex_voices[1],
                             "--other-voice", duplex_voices[2], "--refuse", "voice" if rtc else "temperature,voice")
    assert summary["ok"], f"the page failed at step {summary['step']!r}: {summary.get('error')}\n{context}"
    assert not summary["pageErrors"], context
    recorded = _recorded_configs(server.record_dir, endpoint)[already:]

    # A link with settings: the server ran the conversation with exactly them (over WebRTC: the ones a
    # Realtime session has, as `instructions` and `audio.output.voice`; the sampling keys are not shown).
    url = summary["url"]
    assert url["errors"] == [] and url["mode"] == "duplex" and url["transport"] == transport, context
    link = {"system_prompt": "You like trains.", "voice": duplex_voices[1]}
    assert recorded[0] == (link if rtc else {**link, "temperature": 0.5, "text_top_k": 5, "seed": 7}), recorded
    assert url["form"]["system_prompt"]["value"] == "You like trains.", context
    assert ("temperature" in url["form"]) is not rtc, context

    # Typed into the form: the server got the new ones; a cleared field is not sent; the address bar has them.
    form = summary["form"]
    typed = {"system_prompt": "You are a pirate.", "voice": duplex_voices[2]}
    assert recorded[1] == (typed if rtc else {**typed, "text_top_k": 5, "seed": 11}), recorded
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(form["address"]).query)
    assert query["system_prompt"] == ["You are a pirate."] and query["voice"] == [duplex_voices[2]], context
    assert query["transport"] == [transport], context
    # Changed during the conversation: the server took it (its log of the messages in and out).
    # A persona's prompt is taken at start only on the WebSocket; over WebRTC a session.update restarts with it.
    assert form["changed"]["systemPromptLocked"] is not rtc, context
    events = _recordings(server.record_dir, endpoint)[already + 1][1]
    ins = [e["msg"] for e in events if e.get("dir") == "in" and e.get("kind") == "text"]
    outs = [e["msg"] for e in events if e.get("dir") == "out" and e.get("kind") == "text"]
    if rtc:
        assert {"type": "session.update", "session": {"audio": {"input": {"transcription": {"model": "duplex-stt"}}}}} in ins
        assert outs[-1]["type"] != "error" and any(
            o["type"] == "session.updated" and o["session"]["audio"]["input"]["transcription"] for o in outs), outs[-5:]
    else:
        assert {"type": "configure", "config": {"text_temperature": 0.3}} in ins, ins
        assert not [o for o in outs if o["type"] == "error"], outs
    assert rtc or "temperature" not in query, context   # WebRTC shows no temperature: the link's is kept, unsent

    # A bare reload: the same settings, mode and transport, from localStorage, and back in the address bar.
    reload = summary["reload"]
    assert reload["mode"] == "duplex" and reload["transport"] == transport, context
    assert {k: reload["form"][k]["value"] for k in ("system_prompt", "voice")} == typed, context
    assert "system_prompt=You+are+a+pirate." in reload["address"], context

    # Refusals, beside their field (not in the banner). Over the WebSocket the `start` is refused and
    # nothing is recorded (a voice outside the server's list is `bad_message`, docs/protocol.md); over WebRTC
    # the call goes on without the persona (docs/realtime.md).
    codes = {"voice": "unsupported"} if rtc else {"temperature": "bad_message", "voice": "bad_message"}
    for key, code in codes.items():
        refused = summary["refused"][key]
        assert [e["code"] for e in refused["errors"] if e.get("key") == key] == [code], context
        # /ws names the key in the error (`param`), which the page reads before the text
        assert rtc or [e["param"] for e in refused["errors"] if e.get("key") == key] == [key], context
        assert key in refused["form"][key]["error"], context
        assert all(f["error"] is None for k, f in refused["form"].items() if k != key), context
        assert refused["banner"] is None and refused["started"] is rtc, context
    assert len(recorded) == (3 if rtc else 2), recorded

    # Each mode offers what its engine takes: the persona's voices, the TTS's voices; `auto` (either
    # engine) no voice, as none is common to both.
    modes = summary["modes"]
    assert modes["duplex"]["voice"]["options"] == ["", *duplex_voices], context
    assert modes["cascade"]["voice"]["options"] == ["", *cascade_voices], context
    assert "voice" not in modes["auto"] and "system_prompt" in modes["auto"], context
    assert ("seed" in modes["cascade"]) is not rtc, context
