"""Async Python client for the `/ws` conversation protocol (docs: PROTOCOL.md).

One `DuplexClient` is one WebSocket connection. A background reader task records every server
message in arrival order (`events`, `audio`) and wakes anyone waiting in `wait_for` /
`wait_audio_frames` / `stream()`. JSON `error` messages are ordinary events: the client never
raises because the server reported a problem, only when the connection itself is gone.

Tools (cascade): `register_tool(handler)` adds a function the LLM may call (`tools.ToolSet`); `start` then
offers every registered one (unless its config names `tools` itself), and each `tool_call` for a
registered name is run by the client, which sends the `tool_result` itself.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import typing as tp
from dataclasses import dataclass

import aiohttp
import numpy as np
from yarl import URL

from ..audio import make_codec
from ..protocol import CODECS, KIND_AUDIO, MODES
from .tools import ToolHandler, ToolSet

logger = logging.getLogger(__name__)


@dataclass
class Event:
    """One JSON message from the server."""

    type: str
    data: dict  # the whole parsed JSON object
    received_at: float  # time.monotonic() on arrival

    @property
    def param(self) -> str | None:
        """An `error`'s `param`: the config key it refuses (`voice`, `temperature`), where the server names one."""
        param = self.data.get("param")
        return param if isinstance(param, str) else None


def error_text(data: dict) -> str:
    """An `error` message in one line: `[code]: message`, and the config key at fault where one is named."""
    param = data.get("param")
    return f"[{data.get('code')}]: {data.get('message')}" + (f" (param: {param})" if param else "")


@dataclass
class AudioChunk:
    """Decoded assistant audio from one binary 0x01 message.

    There is one chunk per binary audio message, even when it decoded to no samples (then `pcm` is
    empty), so `audio[k]` is always the k-th audio message: duplex turnaround is measured on it.
    """

    pcm: np.ndarray  # float32 mono 24 kHz
    received_at: float
    seq: int = 0  # 0-based index among the binary audio messages of this connection


class ServerClosed(Exception):
    """The connection is gone (or was refused): `code`/`reason` of the WebSocket close.

    For a refused upgrade (`HandshakeRefused`), `code` is the HTTP status instead.
    """

    def __init__(self, code: int | None, reason: str = "", detail: str = ""):
        self.code = code
        self.reason = reason
        text = f"server closed the connection (code {code}{', ' + repr(reason) if reason else ''})"
        super().__init__(f"{text}: {detail}" if detail else text)


class HandshakeRefused(ServerClosed):
    """The server answered the WebSocket upgrade with an HTTP error (e.g. 401: bad or no token)."""

    HINTS = {401: "the server needs a valid access token (token=... / --token)",
             403: "the access token was refused (token=... / --token)",
             503: "no free slot: every worker behind the load balancer is full (capacity); try again later"}

    def __init__(self, status: int, message: str):
        self.code = status
        self.reason = message
        hint = self.HINTS.get(status, message)
        Exception.__init__(self, f"server refused the WebSocket upgrade with HTTP {status}: {hint}")


_CLOSED = object()  # end-of-stream marker put in stream() queues
# the close reason of a connection that ended with no close frame (1006): a crashed server or worker, a cut network
CONNECTION_LOST = "connection lost: the server (or the balancer in front of it) went away without closing"


def build_ws_url(url: str, *, mode: str | None = None, codec: str = "opus",
                 token: str | None = None, token_in_header: bool = False) -> tuple[str, dict[str, str]]:
    """Returns (WebSocket URL with query, extra headers) for `url` and the connection options.

    `url` may be `ws(s)://host:port/ws` (used as given) or `http(s)://host:port` / `ws://host:port`
    (then `/ws` is the path). Query parameters already in `url` are kept.
    """
    if mode is not None and mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if codec not in CODECS:
        raise ValueError(f"codec must be one of {', '.join(CODECS)}, got {codec!r}")
    if "://" not in url:
        url = "http://" + url  # "127.0.0.1:8998" is a common shorthand
    parsed = URL(url)
    schemes = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}
    if parsed.scheme not in schemes:
        raise ValueError(f"unsupported URL scheme {parsed.scheme!r} in {url!r}")
    query = dict(parsed.query)  # read before with_path, which drops the query
    parsed = parsed.with_scheme(schemes[parsed.scheme])
    if parsed.path in ("", "/"):
        parsed = parsed.with_path("/ws")
    if mode is not None:
        query["mode"] = mode
    query["codec"] = codec
    headers: dict[str, str] = {}
    if token is not None:
        if token_in_header:
            headers["Authorization"] = f"Bearer {token}"
        else:
            query["token"] = token
    return str(parsed.with_query(query)), headers


class DuplexClient:
    """One conversation connection. Create with `await DuplexClient.connect(url, ...)`."""

    def __init__(self, session: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse, codec: str):
        self._http = session
        self._ws = ws
        self.codec = codec
        self._decoder, self._encoder = make_codec(codec)
        self.ready: dict = {}
        self.session_id: str = ""
        self.events: list[Event] = []
        self.audio: list[AudioChunk] = []
        self.binary_messages = 0
        self.samples_sent = 0
        self.close_code: int | None = None
        self.close_reason: str = ""
        self._closed = False
        self._changed = asyncio.Condition()
        self._cursors: dict[str, int] = {}  # per event type: index in self.events to search from
        self._subscribers: list[asyncio.Queue] = []
        self.tools = ToolSet()                          # handlers this client runs for `tool_call`s
        self._tool_tasks: set[asyncio.Task] = set()     # calls running (cancelled at close)
        self._reader = asyncio.create_task(self._read_loop(), name="duplex-client-reader")

    # ---- connecting ---------------------------------------------------------------------------

    @classmethod
    async def connect(cls, url: str, *, mode: str | None = None, codec: str = "opus",
                      token: str | None = None, token_in_header: bool = False,
                      ready_timeout: float = 30.0) -> "DuplexClient":
        """Opens the socket and waits for `ready`. Raises ServerClosed / HandshakeRefused / TimeoutError."""
        ws_url, headers = build_ws_url(url, mode=mode, codec=codec, token=token, token_in_header=token_in_header)
        session = aiohttp.ClientSession()
        try:
            ws = await session.ws_connect(ws_url, headers=headers, autoping=True, max_msg_size=0)
        except aiohttp.WSServerHandshakeError as exc:
            await session.close()
            raise HandshakeRefused(exc.status, exc.message) from None
        except BaseException:
            await session.close()
            raise
        client = cls(session, ws, codec)
        try:
            ready = await client.wait_for("ready", timeout=ready_timeout)
        except BaseException:
            await client.close()
            raise
        client.ready = ready.data
        client.session_id = str(ready.data.get("session_id", ""))
        return client

    async def __aenter__(self) -> "DuplexClient":
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def closed(self) -> bool:
        return self._closed

    async def close(self) -> None:
        """Closes the socket (normal closure) and waits for the reader to finish. Idempotent."""
        for task in list(self._tool_tasks):
            task.cancel()
        await asyncio.gather(*self._tool_tasks, return_exceptions=True)
        if not self._ws.closed:
            await self._ws.close()
        _, pending = await asyncio.wait({self._reader}, timeout=5.0)
        for task in pending:
            task.cancel()
        if self.close_code is None:
            self.close_code = self._ws.close_code
        await self._http.close()
        await self._mark_closed()

    # ---- sending ------------------------------------------------------------------------------

    async def start(self, mode: str | None = None, config: dict | None = None) -> None:
        msg: dict[str, tp.Any] = {"type": "start"}
        if mode is not None:
            msg["mode"] = mode
        if self.tools and "tools" not in (config or {}):
            config = {**(config or {}), "tools": self.tools.tools()}
        if config is not None:
            msg["config"] = config
        await self.send_json(msg)

    def register_tool(self, handler: ToolHandler, name: str | None = None, description: str | None = None,
                      parameters: dict | None = None) -> None:
        """A function the LLM may call (its definition read from the function where not given); `start`
        offers it and the client answers its calls."""
        self.tools.add(handler, name, description, parameters)

    async def tool_result(self, call_id: str, output: str) -> None:
        await self.send_json({"type": "tool_result", "call_id": call_id, "output": output})

    async def _answer_call(self, call_id: str, name: str, arguments: str) -> None:
        output = await self.tools.run(name, arguments)
        try:
            await self.tool_result(call_id, output)
        except ServerClosed:
            logger.info("tool %s finished after the connection closed; its result is dropped", name)

    async def stop(self) -> None:
        """Sends `stop`; the answer (`stop_acknowledged`) arrives as an event."""
        await self.send_json({"type": "stop"})

    async def reset(self) -> None:
        await self.send_json({"type": "reset"})

    async def interrupt(self) -> None:
        await self.send_json({"type": "interrupt"})

    async def configure(self, config: dict) -> None:
        await self.send_json({"type": "configure", "config": config})

    async def text_input(self, text: str) -> None:
        await self.send_json({"type": "text_input", "text": text})

    async def send_json(self, obj: tp.Any) -> None:
        await self.send_text_raw(json.dumps(obj))

    async def send_text_raw(self, text: str) -> None:
        await self._send(self._ws.send_str(text))

    async def send_bytes_raw(self, data: bytes) -> None:
        await self._send(self._ws.send_bytes(data))

    async def send_audio(self, pcm: np.ndarray) -> None:
        """Encodes float32 24 kHz mono PCM with the connection's codec and sends it as 0x01 audio.

        Opus buffers until it has a whole page, so a short chunk may send nothing yet.
        """
        pcm = np.asarray(pcm, dtype=np.float32).reshape(-1)
        payload = self._encoder.encode(pcm)
        self.samples_sent += len(pcm)
        if payload:
            await self.send_bytes_raw(bytes([KIND_AUDIO]) + payload)

    async def _send(self, coro: tp.Awaitable[None]) -> None:
        if self._ws.closed:
            if asyncio.iscoroutine(coro):
                coro.close()  # never awaited: avoid the "never awaited" warning
            raise self._closed_error("cannot send")
        try:
            await coro
        except (ConnectionError, aiohttp.ClientConnectionError) as exc:
            raise self._closed_error(f"send failed: {exc}") from None

    # ---- receiving ----------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        try:
            while True:
                msg = await self._ws.receive()
                if msg.type == aiohttp.WSMsgType.TEXT:
                    self._on_text(msg.data)
                elif msg.type == aiohttp.WSMsgType.BINARY:
                    self._on_binary(msg.data)
                elif msg.type == aiohttp.WSMsgType.CLOSE:
                    self.close_code = msg.data
                    self.close_reason = msg.extra or ""
                    break
                elif msg.type == aiohttp.WSMsgType.ERROR:
                    logger.warning("WebSocket error: %s", msg.data)
                    self.close_reason = self.close_reason or f"error: {msg.data}"
                    break
                else:  # CLOSING / CLOSED: we (or the transport) closed the socket
                    break
                async with self._changed:
                    self._changed.notify_all()
        except asyncio.CancelledError:
            pass
        except Exception:  # the reader must never die silently: waiters would hang
            logger.exception("duplex client reader failed")
        finally:
            if self.close_code is None:
                self.close_code = self._ws.close_code
            if self.close_code == aiohttp.WSCloseCode.ABNORMAL_CLOSURE and not self.close_reason:
                self.close_reason = CONNECTION_LOST   # no close frame came: say what that means
            await self._mark_closed()

    def _on_text(self, text: str) -> None:
        try:
            data = json.loads(text)
        except ValueError:
            logger.warning("server sent a text message that is not JSON: %.200r", text)
            return
        if not isinstance(data, dict):
            logger.warning("server sent JSON that is not an object: %.200r", text)
            return
        event = Event(type=str(data.get("type", "")), data=data, received_at=time.monotonic())
        self.events.append(event)
        self._publish(event)
        if event.type == "tool_call" and data.get("name") in self.tools.handlers:
            task = asyncio.create_task(self._answer_call(str(data.get("call_id")), str(data["name"]),
                                                         str(data.get("arguments", ""))), name="duplex-client-tool")
            self._tool_tasks.add(task)
            task.add_done_callback(self._tool_tasks.discard)

    def _on_binary(self, data: bytes) -> None:
        now = time.monotonic()
        if not data or data[0] != KIND_AUDIO:
            logger.warning("server sent a binary message of unknown kind (%d bytes)", len(data))
            return
        try:
            pcm = np.asarray(self._decoder.decode(data[1:]), dtype=np.float32)
        except ValueError as exc:  # BadAudio: keep the slot so indices stay aligned
            logger.warning("could not decode assistant audio: %s", exc)
            pcm = np.zeros(0, dtype=np.float32)
        chunk = AudioChunk(pcm=pcm, received_at=now, seq=self.binary_messages)
        self.binary_messages += 1
        self.audio.append(chunk)
        self._publish(chunk)

    def _publish(self, item: Event | AudioChunk) -> None:
        for queue in self._subscribers:
            queue.put_nowait(item)

    async def _mark_closed(self) -> None:
        if self._closed:
            return
        self._closed = True
        for queue in self._subscribers:
            queue.put_nowait(_CLOSED)
        async with self._changed:
            self._changed.notify_all()

    def _closed_error(self, detail: str) -> ServerClosed:
        last_error = self._last_error_text()
        return ServerClosed(self.close_code, self.close_reason, f"{detail}; {last_error}" if last_error else detail)

    def _last_error_text(self) -> str:
        errors = [e for e in self.events if e.type == "error"]
        if not errors:
            return ""
        last = errors[-1].data
        return f"last error from the server: {error_text(last)}"

    # ---- waiting ------------------------------------------------------------------------------

    async def _wait_until(self, check: tp.Callable[[], tp.Any], timeout: float,
                          what: tp.Callable[[], str]) -> tp.Any:
        """Returns check()'s first non-None result; ServerClosed if the socket closes first."""
        async def wait() -> tp.Any:
            async with self._changed:
                while True:
                    result = check()
                    if result is not None:
                        return result
                    if self._closed:
                        raise self._closed_error(f"while waiting for {what()}")
                    await self._changed.wait()

        try:
            return await asyncio.wait_for(wait(), timeout)
        except asyncio.TimeoutError:
            raise TimeoutError(f"no {what()} within {timeout:g} s") from None

    async def wait_for(self, type_: str, timeout: float = 10.0,
                       predicate: tp.Callable[[Event], bool] | None = None) -> Event:
        """Next event of `type_` (matching `predicate`) after the last one wait_for returned for that type.

        One cursor per type: events of that type passed over by a predicate are not returned later.
        """
        def find() -> Event | None:
            start = self._cursors.get(type_, 0)
            for index in range(start, len(self.events)):
                event = self.events[index]
                if event.type == type_ and (predicate is None or predicate(event)):
                    self._cursors[type_] = index + 1
                    return event
            return None

        return await self._wait_until(find, timeout, lambda: f"{type_!r} event")

    async def wait_until(self, check: tp.Callable[[], tp.Any], timeout: float, what: str = "condition") -> tp.Any:
        """check()'s first non-None result, checked as each message arrives; TimeoutError, or ServerClosed."""
        return await self._wait_until(check, timeout, lambda: what)

    async def wait_audio_frames(self, n: int, timeout: float = 10.0) -> None:
        """Waits until at least `n` binary audio messages have arrived in total."""
        await self._wait_until(lambda: True if self.binary_messages >= n else None, timeout,
                               lambda: f"{n} audio frames (have {self.binary_messages})")

    def stream(self) -> tp.AsyncIterator[Event | AudioChunk]:
        """Every event and audio chunk from this call on, in arrival order; ends when the socket closes."""
        queue: asyncio.Queue = asyncio.Queue()
        if self._closed:
            queue.put_nowait(_CLOSED)
        self._subscribers.append(queue)
        return self._drain(queue)

    async def _drain(self, queue: asyncio.Queue) -> tp.AsyncIterator[Event | AudioChunk]:
        try:
            while True:
                item = await queue.get()
                if item is _CLOSED:
                    return
                yield item
        finally:
            if queue in self._subscribers:
                self._subscribers.remove(queue)

    def events_of(self, type_: str) -> list[Event]:
        """All events of one type received so far (ignores wait_for cursors)."""
        return [e for e in self.events if e.type == type_]

    def assistant_pcm(self) -> np.ndarray:
        """All received assistant audio, concatenated in arrival order."""
        if not self.audio:
            return np.zeros(0, dtype=np.float32)
        return np.concatenate([chunk.pcm for chunk in self.audio]).astype(np.float32, copy=False)
