"""Protocol fuzzing (hypothesis) of /ws, /api/chat and /v1/realtime against the in-process app.

Generated client messages, valid and broken (tests/fuzz_strategies.py), go to one socket while a
neighbour conversation streams on another. For every example:
- nothing escapes a handler: no ERROR log record (connection.py logs "internal error" and closes 1011);
- every refusal is the protocol's coded error: /ws `error` with a code of protocol.ERROR_CODES, /api/chat
  0x05 `<code>: <message>`, /v1/realtime `error` `invalid_request_error` (never `internal`), and a close
  is a policy close (1000, 1008, 1009), never 1011;
- the neighbour loses no frame: each of its frames comes back, in order, unchanged;
- slots and sockets return to where they were once the fuzzed socket is gone; after a whole test no
  per-connection object (session, codec, outbox, stream) is left alive but the neighbour's.

The bounded profile (CI, the default) is deterministic: derandomized, no example database, a fixed
number of examples. `DUPLEX_FUZZ_EXAMPLES=N` (scripts/fuzz.py) runs N random examples per endpoint.
See docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import typing as tp

import numpy as np
import pytest
from aiohttp import WSMsgType
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from duplex import protocol
from duplex.audio import FRAME_SAMPLES, float_to_pcm16
from duplex.server.app import create_app
from duplex.server.protocols.realtime import events as realtime_events
from duplex.server.settings import ServerSettings
from duplex.server.state import SOCKETS

from . import fuzz_strategies as fs
from .test_server_inprocess import FakeEngine, FakeStream

LONG_EXAMPLES = int(os.environ.get("DUPLEX_FUZZ_EXAMPLES", "0"))
FUZZ_SETTINGS = settings(
    max_examples=LONG_EXAMPLES or 120, derandomize=not LONG_EXAMPLES, database=None, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large], print_blob=True)
MAX_MESSAGE_BYTES = 64 * 1024
WAIT_S = 3.0
REALTIME_CODES = (*protocol.ERROR_CODES, *realtime_events.ERROR_CODES)
POLICY_CLOSES = {1000, 1008, 1009}
PER_CONNECTION = ("Session", "RealtimeSession", "DuplexCodec", "MoshiCodec", "RealtimeCodec", "Outbox", "FakeStream")


class ErrorRecords(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class FuzzServer:
    """The app on its own event loop (hypothesis drives sync tests), with a neighbour conversation."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.engines = {"duplex": FakeEngine("duplex", slots=4), "cascade": FakeEngine("cascade", slots=4)}
        self.errors = ErrorRecords()
        logging.getLogger().addHandler(self.errors)
        self.run(self._start())
        self.neighbour_frames = 0

    def run(self, coro: tp.Awaitable) -> tp.Any:
        return self.loop.run_until_complete(coro)

    async def _start(self) -> None:
        self.app = create_app(self.engines, ServerSettings(static_dir=None, max_message_bytes=MAX_MESSAGE_BYTES,
                                                           start_timeout_s=0))
        self.client = TestClient(TestServer(self.app))
        await self.client.start_server()
        self.neighbour = await self.client.ws_connect("/ws?codec=pcm16")
        assert json.loads((await self.neighbour.receive(timeout=WAIT_S)).data)["type"] == "ready"
        await self.neighbour.send_json({"type": "start", "mode": "duplex"})
        assert json.loads((await self.neighbour.receive(timeout=WAIT_S)).data)["status"] == "listening"

    def close(self) -> None:
        async def stop() -> None:
            await self.neighbour.close()
            await self.client.close()
        self.run(stop())
        self.loop.close()
        logging.getLogger().removeHandler(self.errors)

    def baseline(self) -> tuple[int, int, int]:
        return (self.engines["duplex"].active, self.engines["cascade"].active, len(self.app[SOCKETS]))

    async def neighbour_frame(self) -> None:
        """One frame to the neighbour; its echo must come back unchanged (the fake engine echoes)."""
        self.neighbour_frames += 1
        pcm = np.random.default_rng(self.neighbour_frames).uniform(-0.5, 0.5, FRAME_SAMPLES).astype(np.float32)
        sent = float_to_pcm16(pcm)
        await self.neighbour.send_bytes(b"\x01" + sent)
        while True:
            msg = await self.neighbour.receive(timeout=WAIT_S)
            assert msg.type in (WSMsgType.TEXT, WSMsgType.BINARY), f"the neighbour's socket ended: {msg}"
            if msg.type == WSMsgType.BINARY:
                echoed = np.frombuffer(msg.data[1:], dtype="<i2").astype(int)
                assert len(echoed) == FRAME_SAMPLES and np.abs(echoed - np.frombuffer(sent, dtype="<i2")).max() <= 1, \
                    f"the neighbour's frame {self.neighbour_frames} came back changed"   # (pcm16 -> float -> pcm16: 1 LSB)
                return

    async def settle(self, start: tuple[int, int, int]) -> None:
        """Slots and sockets back where they were (teardown runs on the loop, just after the close)."""
        for _ in range(200):
            if self.baseline() == start:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"slots/sockets (duplex, cascade, sockets) {self.baseline()} != {start} after the close")


@pytest.fixture(scope="module")
def fuzz_server():
    server = FuzzServer()
    yield server
    for engine in server.engines.values():   # (the fake engine keeps every stream it opened: for its tests)
        engine.streams = [stream for stream in engine.streams if not stream.closed.is_set()]
    counts = live_per_connection_objects()
    active = server.baseline()
    server.close()
    # only the neighbour's conversation objects are alive: nothing a fuzzed socket made outlived it
    assert all(n <= 1 for n in counts.values()), counts
    assert active == (1, 0, 1), active


def live_per_connection_objects() -> dict[str, int]:
    gc.collect()
    counts: dict[str, int] = {}
    for obj in gc.get_objects():
        name = type(obj).__name__
        if name not in PER_CONNECTION or not type(obj).__module__.startswith(("duplex.", "tests.")):
            continue   # (pytest has a Session of its own)
        if not isinstance(obj, FakeStream) or not obj.closed.is_set():
            counts[name] = counts.get(name, 0) + 1
    return counts


# --- one example ---------------------------------------------------------------------------------------
class Endpoint(tp.NamedTuple):
    path: str
    sentinel: str | bytes          # answered by a message `is_sentinel` recognises
    is_sentinel: tp.Callable[[tp.Any], bool]
    look_alikes: tp.Callable[[fs.Message], bool]   # fuzzed messages answered as the sentinel is
    check: tp.Callable[[tp.Any], None]   # raises on a message that breaks the properties


def check_ws(msg: tp.Any) -> None:
    if msg.type == WSMsgType.TEXT:
        event = json.loads(msg.data)
        if event.get("type") == "error":
            assert event.get("code") in protocol.ERROR_CODES and event["code"] != "internal", event


def check_moshi(msg: tp.Any) -> None:
    assert msg.type == WSMsgType.BINARY, f"/api/chat sent a non-binary message: {msg}"
    if msg.data[:1] == bytes([protocol.KIND_ERROR]):
        code = msg.data[1:].decode().split(":", 1)[0]
        assert code in protocol.ERROR_CODES and code != "internal", msg.data


def check_realtime(msg: tp.Any) -> None:
    assert msg.type == WSMsgType.TEXT, f"/v1/realtime sent a non-text message: {msg}"
    event = json.loads(msg.data)
    if event.get("type") == "error":
        error = event["error"]
        assert error["code"] in REALTIME_CODES and error["type"] == "invalid_request_error", error


def json_error(msg: tp.Any, code: str, needle: str) -> bool:
    if msg.type != WSMsgType.TEXT:
        return False
    event = json.loads(msg.data)
    error = event.get("error") if isinstance(event.get("error"), dict) else event
    return event.get("type") == "error" and error.get("code") == code and needle in json.dumps(event)


WS = Endpoint("/ws?codec={codec}", json.dumps({"type": "fuzz-sentinel"}),
              lambda m: json_error(m, "bad_message", "fuzz-sentinel"), lambda m: False, check_ws)
MOSHI = Endpoint("/api/chat", b"\x02fuzz-sentinel",
                 lambda m: m.type == WSMsgType.BINARY and m.data[:1] == b"\x05" and b"text input" in m.data,
                 lambda m: isinstance(m, bytes) and m[:1] == b"\x02", check_moshi)
REALTIME = Endpoint("/v1/realtime?model={mode}", json.dumps({"type": "fuzz.sentinel", "event_id": "fuzz-sentinel"}),
                    lambda m: json_error(m, "unknown_type", "fuzz-sentinel"), lambda m: False, check_realtime)


async def exercise(server: FuzzServer, endpoint: Endpoint, path: str, opening: list[fs.Message],
                   messages: list[list[fs.Message]]) -> None:
    start = server.baseline()
    server.errors.records.clear()
    ws = await server.client.ws_connect(path, max_msg_size=0)
    try:
        await _exercise(server, endpoint, ws, opening, messages)
    finally:   # a failing example must not leave its socket open for the next (they shrink one after another)
        await ws.close()
    await server.settle(start)
    assert not server.errors.records, [r.getMessage() for r in server.errors.records]


async def _exercise(server: FuzzServer, endpoint: Endpoint, ws: tp.Any, opening: list[fs.Message],
                    messages: list[list[fs.Message]]) -> None:
    received: list[tp.Any] = []
    closed_by_server = False

    answers = 1 + sum(endpoint.look_alikes(m) for group in messages for m in group)

    async def read_until_sentinel() -> None:
        nonlocal closed_by_server, answers
        while True:
            try:
                msg = await ws.receive(timeout=WAIT_S)
            except asyncio.TimeoutError:
                raise AssertionError(f"no answer to the sentinel within {WAIT_S} s; last received: "
                                     f"{[str(m.data)[:120] for m in received[-3:]]}") from None
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
                closed_by_server = True
                return
            received.append(msg)
            if endpoint.is_sentinel(msg):
                answers -= 1
                if answers == 0:
                    return

    reader = asyncio.create_task(read_until_sentinel())
    for group in [opening, *messages, [endpoint.sentinel]]:
        for message in group:
            if ws.closed or reader.done():
                break
            message = expand(message)
            try:
                await (ws.send_str(message) if isinstance(message, str) else ws.send_bytes(message))
            except ConnectionError:
                break
        await server.neighbour_frame()
    await reader
    for msg in received:
        endpoint.check(msg)
    if closed_by_server:
        # aiohttp answers an oversized message with 1009 while the client may still be writing it: the
        # connection can then end before the close frame is read (1006). Anything else is a policy close.
        oversized = any(m in (OVERSIZED_BINARY, OVERSIZED_TEXT) for group in messages for m in group)
        assert ws.close_code in POLICY_CLOSES | ({1006} if oversized else set()), f"closed {ws.close_code}"


# Past the app's message limit (aiohttp closes 1009), drawn as a marker so a failing example prints short.
OVERSIZED_BINARY, OVERSIZED_TEXT = b"<oversized>", "<oversized>"
OVERSIZED = st.sampled_from([[OVERSIZED_BINARY], [OVERSIZED_TEXT]])


def expand(message: fs.Message) -> fs.Message:
    if message == OVERSIZED_BINARY:
        return b"\x01" + bytes(MAX_MESSAGE_BYTES + 1)
    return "x" * (MAX_MESSAGE_BYTES + 1) if message == OVERSIZED_TEXT else message


def examples(messages: st.SearchStrategy[list[fs.Message]]) -> st.SearchStrategy[list[list[fs.Message]]]:
    return st.lists(st.one_of(messages, messages, messages, OVERSIZED), min_size=1, max_size=10)


@FUZZ_SETTINGS
@given(codec=st.sampled_from(fs.protocol.CODECS), start=st.sampled_from([None, "duplex", "cascade", "auto"]),
       data=st.data())
def test_fuzz_ws(fuzz_server, codec, start, data):
    opening = [] if start is None else [json.dumps({"type": "start", "mode": start})]
    messages = data.draw(examples(fs.ws_messages(codec)))
    fuzz_server.run(exercise(fuzz_server, WS, WS.path.format(codec=codec), opening, messages))


@FUZZ_SETTINGS
@given(messages=examples(fs.moshi_messages()))
def test_fuzz_api_chat(fuzz_server, messages):
    fuzz_server.run(exercise(fuzz_server, MOSHI, MOSHI.path, [], messages))


@FUZZ_SETTINGS
@given(mode=st.sampled_from(["duplex", "cascade", "auto"]), messages=examples(fs.realtime_messages()))
def test_fuzz_realtime(fuzz_server, mode, messages):
    fuzz_server.run(exercise(fuzz_server, REALTIME, REALTIME.path.format(mode=mode), [], messages))
