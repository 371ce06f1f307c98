"""/v1/realtime's duplex persona restart, in process: the app around a fake engine that keeps the config
each conversation is opened and configured with.

`session.update` with `instructions` or `voice` restarts a duplex conversation with the new persona; every
other setting the session reports (user transcription) must hold in the new conversation too, or
`session.updated` would say it is on while the engine no longer transcribes.
"""

from __future__ import annotations

from duplex.engines.base import Sink

from .test_server_inprocess import FakeEngine, FakeStream, receive_json, serving


class ConfiguredStream(FakeStream):
    def __init__(self, engine: FakeEngine, sink: Sink, config: dict):
        super().__init__(engine, sink)
        self.config = dict(config)

    def configure(self, config: dict) -> None:
        super().configure(config)
        self.config.update(config)


class ConfiguredEngine(FakeEngine):
    def open(self, config: dict, sink: Sink) -> ConfiguredStream:
        self.calls["open"] += 1
        self.active += 1
        stream = ConfiguredStream(self, sink, config)
        self.streams.append(stream)
        return stream


async def update(ws, session: dict) -> dict:
    await ws.send_json({"type": "session.update", "session": session})
    while (event := await receive_json(ws))["type"] != "session.updated":
        assert event["type"] != "error", event
    return event["session"]


async def test_a_persona_restart_keeps_user_transcription_on() -> None:
    engine = ConfiguredEngine()
    async with serving(engine) as client:
        ws = await client.ws_connect("/v1/realtime?model=duplex")
        assert (await receive_json(ws))["type"] == "session.created"
        session = await update(ws, {"audio": {"input": {"transcription": {"model": "whisper-1"}}}})
        assert session["audio"]["input"]["transcription"] is not None
        assert engine.streams[-1].config.get("transcribe_user") is True
        session = await update(ws, {"instructions": "You collect stamps.", "audio": {"output": {"voice": "NATF2"}}})
        assert len(engine.streams) == 2, "the persona restarts the conversation"
        assert session["instructions"] == "You collect stamps."
        assert session["audio"]["input"]["transcription"] is not None
        restarted = engine.streams[-1].config
        assert restarted.get("system_prompt") == "You collect stamps." and restarted.get("voice") == "NATF2"
        assert restarted.get("transcribe_user") is True, "session.updated says transcription is on, the engine does not"
        # and off again: a later persona change restarts without it
        session = await update(ws, {"audio": {"input": {"transcription": None}}})
        assert session["audio"]["input"]["transcription"] is None
        await update(ws, {"instructions": "You collect coins."})
        assert not engine.streams[-1].config.get("transcribe_user")
        await ws.close()
