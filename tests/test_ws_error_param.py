"""`/ws` errors name the config key they refuse (`param`) on a real server (tiny cascade + duplex)."""

from __future__ import annotations

import pytest

from duplex.client import DuplexClient


@pytest.mark.parametrize("mode, config, code, param", [
    ("cascade", {"voice": "no-such-voice"}, "bad_message", "voice"),      # outside the TTS's own voices
    ("duplex", {"voice": "NATF2"}, "unsupported", "voice"),              # the tiny duplex model has no persona
    ("cascade", {"temperature": 9.5}, "bad_message", "temperature"),     # out of range: refused at parsing
    ("duplex", {"seed": True}, "bad_message", "seed"),                   # wrong type
    ("cascade", {"loudness": 3}, "bad_message", "loudness"),             # an unknown key
    ("cascade", {"cfg_coef": 2.0}, "unsupported", "cfg_coef"),           # a duplex-only key
], ids=["cascade-voice", "duplex-voice", "temperature-range", "seed-type", "unknown-key", "other-engine-key"])
async def test_a_refused_start_config_names_its_key(cascade_server, mode, config, code, param):
    async with await DuplexClient.connect(cascade_server.http_url, codec="pcm16") as client:
        await client.start(mode=mode, config=config)
        error = await client.wait_for("error")
        assert (error.data["code"], error.data["param"], error.param) == (code, param, param), error.data
        await client.start(mode=mode)   # the socket still works: a good start goes through
        assert (await client.wait_for("status")).data["status"] == "listening"


async def test_a_refused_configure_names_its_key_and_others_have_none(cascade_server):
    async with await DuplexClient.connect(cascade_server.http_url, codec="pcm16") as client:
        await client.start(mode="cascade")
        await client.wait_for("status")
        for config, param in (({"voice": "nobody"}, "voice"), ({"text_temperature": -1}, "text_temperature"),
                              ({"nonsense": 1}, "nonsense")):
            await client.configure(config)
            assert (await client.wait_for("error")).param == param
        await client.send_json({"type": "no_such_type"})   # an error about no config key: no `param`
        error = await client.wait_for("error")
        assert error.data["code"] == "bad_message" and "param" not in error.data and error.param is None
