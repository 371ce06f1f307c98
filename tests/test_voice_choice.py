"""A conversation's `voice` is one of the server's own (issue 24 item 8): anything else is `error` `bad_message`
naming the valid choices, over the real protocol on a real server (tiny cascade)."""

from __future__ import annotations

from pathlib import Path

from duplex.client import DuplexClient
from duplex.models.tiny.tts import TINY_VOICES


async def refusal(url: str, voice: str) -> dict:
    async with await DuplexClient.connect(url, mode="cascade", codec="pcm16") as client:
        await client.start(mode="cascade", config={"voice": voice})
        return (await client.wait_for("error", timeout=20)).data


async def test_a_path_or_url_voice_is_a_bad_message_naming_the_servers_voices(cascade_server, tmp_path: Path):
    planted = tmp_path / "planted.safetensors"
    planted.write_bytes(b"\0" * 64)
    for voice in (str(planted), f"file://{planted}", "hf://kyutai/tts-voices/expresso/x.wav", "../../etc/passwd"):
        error = await refusal(cascade_server.http_url, voice)
        assert error["code"] == "bad_message", error
        assert all(v in error["message"] for v in TINY_VOICES), error
    async with await DuplexClient.connect(cascade_server.http_url, mode="cascade", codec="pcm16") as client:
        await client.start(mode="cascade", config={"voice": TINY_VOICES[1]})   # one of the list: served
        assert (await client.wait_for("status", timeout=20)).data["status"] == "listening"
