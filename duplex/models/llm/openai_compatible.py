"""An OpenAI-compatible streaming chat client (vLLM, llama.cpp server, Ollama, OpenAI, ...).

POST {url}/v1/chat/completions with `stream: true` and read Server-Sent Events: `data: {chunk}`
lines carrying `choices[0].delta.content`, ended by `data: [DONE]`. Every way this can go wrong
(endpoint down, HTTP error, no token for `token_timeout` seconds, a body that is not that shape)
becomes an `LLMError` whose message names the endpoint and the cause: the session reports it and
lives on. Setting `cancel` or closing the generator drops the connection at once, which is how
these servers learn to stop generating.

Tools go through as the chat-completions API has them (`tools`, `tool_choice`, the history's assistant
`tool_calls` and `tool` messages), and the streamed `delta.tool_calls` pieces come back as `ToolCallDelta`s
(vLLM with a tool-call parser, llama.cpp with --jinja, Ollama and OpenAI emit them).

Token usage: the request asks `stream_options: {"include_usage": true}`, and the `usage` the server sends
(`prompt_tokens`, `completion_tokens`; in its last chunk, or in a whole answer) is what `usage` gets (a
server that refuses the option with an HTTP error naming it is asked again without it, and never with it
again). A response whose server sends no usage (one that ignores or refuses the option, or a response cut
before its end) is counted here with the served model's tokenizer when this machine has it
(`token_count.TokenCounter`), else counts 0 tokens.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any, AsyncIterator

import aiohttp

from .base import ChatMessage, LLMDelta, LLMError, TokenUsage, ToolCallDelta, ToolChoice, tool_choice_wire
from .token_count import TokenCounter

log = logging.getLogger(__name__)

_DONE = object()


def completions_url(url: str) -> str:
    """A base URL (`http://host:8000`, `.../v1`) or a full `.../chat/completions` URL."""
    url = url.rstrip("/")
    if url.endswith("/chat/completions"):
        return url
    if url.endswith("/v1"):
        return url + "/chat/completions"
    return url + "/v1/chat/completions"


class OpenAICompatibleLLM:
    def __init__(self, url: str, model: str | None = None, api_key: str | None = None,
                 connect_timeout: float = 5.0, token_timeout: float = 10.0, counter: TokenCounter | None = None):
        self.url = completions_url(url)
        self.model = model
        self.api_key = api_key
        self.connect_timeout = connect_timeout
        self.token_timeout = token_timeout  # the longest wait for the first or the next token
        self.counter = counter              # counts a response's tokens when the server reports none
        self.ask_usage = True               # off once the server refuses `stream_options` (an older server)
        self.name = f"openai:{self.url}" + (f" ({model})" if model else "")
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _client(self) -> aiohttp.ClientSession:
        # One pooled session (kept-alive connections save a handshake per turn), made on first use
        # inside the running loop, and remade if that loop has gone (tests, restarts).
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._session._loop is not loop:
            timeout = aiohttp.ClientTimeout(total=None, connect=self.connect_timeout,
                                            sock_connect=self.connect_timeout)
            self._session = aiohttp.ClientSession(timeout=timeout)
        return self._session

    def request_body(self, messages: list[ChatMessage], temperature: float, max_tokens: int,
                     seed: int | None, tools: list[dict] | None = None,
                     tool_choice: ToolChoice | None = None, top_k: int | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "messages": [m.to_openai() for m in messages],
            "stream": True, "temperature": temperature, "max_tokens": max_tokens,
        }
        if self.ask_usage:
            body["stream_options"] = {"include_usage": True}   # a last chunk with the token counts
        if tools:
            body["tools"] = tools
            if tool_choice is not None:
                body["tool_choice"] = tool_choice_wire(tool_choice)
        if self.model:  # vLLM and llama.cpp serve one model and accept none; Ollama/OpenAI need it
            body["model"] = self.model
        if seed is not None:
            body["seed"] = seed
        if top_k is not None:   # not OpenAI's: vLLM's (and llama.cpp's) extra sampling parameter, sent only when set
            body["top_k"] = top_k
        return body

    async def stream(self, messages: list[ChatMessage], *, temperature: float, max_tokens: int,
                     cancel: asyncio.Event, seed: int | None = None, tools: list[dict] | None = None,
                     tool_choice: ToolChoice | None = None, usage: TokenUsage | None = None,
                     top_k: int | None = None) -> AsyncIterator[LLMDelta]:
        counts = _Counts()
        try:
            async for delta in self._stream(messages, temperature, max_tokens, cancel, seed, tools, tool_choice, counts,
                                            top_k):
                yield delta
        finally:
            if usage is not None:
                if counts.sent and not counts.reported and self.counter is not None:
                    counts.input_tokens = self.counter.prompt([m.to_openai() for m in messages], tools)
                    counts.output_tokens = self.counter.text(counts.text)
                usage.add(counts.input_tokens, counts.output_tokens)

    async def _stream(self, messages: list[ChatMessage], temperature: float, max_tokens: int, cancel: asyncio.Event,
                      seed: int | None, tools: list[dict] | None, tool_choice: ToolChoice | None,
                      counts: "_Counts", top_k: int | None = None) -> AsyncIterator[LLMDelta]:
        headers = {"Accept": "text/event-stream"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        if cancel.is_set():
            return
        body = self.request_body(messages, temperature, max_tokens, seed, tools, tool_choice, top_k)
        deadline = _Deadline(self.token_timeout)
        response = await self._open(body, headers, cancel, deadline)
        if response is None:
            return
        counts.sent = True
        try:
            if response.content_type == "application/json":  # the server ignored `stream: true`
                for item in await self._whole_answer(response, cancel, deadline, counts):
                    yield item
                return
            async for delta in self._events(response, cancel, deadline, counts):
                yield delta
        finally:
            # Closing (not releasing) drops the connection: the server sees it and stops generating.
            response.close()

    async def _open(self, body: dict, headers: dict, cancel: asyncio.Event,
                    deadline: "_Deadline") -> aiohttp.ClientResponse | None:
        """The response to `body`, its status checked. A server that refuses `stream_options` (an HTTP error
        naming it) is asked again without it, and from then on never with it: its turns count as one that
        reports no usage (module docstring)."""
        while True:
            response = await self._post(body, headers, cancel, deadline)
            if response is None:
                return None
            try:
                await self._check_status(response)
                return response
            except LLMError as exc:
                response.close()
                if "stream_options" not in body or "stream_options" not in str(exc):
                    raise
                log.warning("%s refuses stream_options (%s): asking without it, no usage from it", self.url, exc)
                self.ask_usage = False
                body = {k: v for k, v in body.items() if k != "stream_options"}

    async def _post(self, body: dict, headers: dict, cancel: asyncio.Event,
                    deadline: "_Deadline") -> aiohttp.ClientResponse | None:
        """Sends the request; the response headers must come before the token timeout."""
        request = self._client().post(self.url, json=body, headers=headers)
        try:
            return await _unless_cancelled(request, cancel, deadline, self._stalled("the response"))
        except aiohttp.ClientError as exc:
            raise LLMError(f"cannot reach LLM endpoint {self.url}: {type(exc).__name__}: {exc}") from exc

    async def _check_status(self, response: aiohttp.ClientResponse) -> None:
        if response.status < 400:
            return
        try:
            body = (await asyncio.wait_for(response.text(), self.token_timeout))[:300]
        except (aiohttp.ClientError, asyncio.TimeoutError, UnicodeDecodeError):
            body = ""  # a broken error body must not hide the HTTP status we are reporting
        detail = _error_message(body) or response.reason or ""
        raise LLMError(f"LLM endpoint {self.url} answered HTTP {response.status}: {detail}".rstrip(": "))

    async def _events(self, response: aiohttp.ClientResponse, cancel: asyncio.Event,
                      deadline: "_Deadline", counts: "_Counts") -> AsyncIterator[LLMDelta]:
        """Text and tool-call deltas from the SSE body, until [DONE], the end of a finished answer, or cancel."""
        finished = False  # a chunk said finish_reason: a server that then omits [DONE] is fine
        while True:
            line = await self._read_line(response, cancel, deadline)
            if line is None:
                return
            if not isinstance(line, str):  # _DONE
                break
            item = self._parse_event(line, counts)
            if not isinstance(item, tuple):  # None: a keep-alive or empty chunk; _DONE: the end
                if item is _DONE:
                    return
                continue
            deltas, finished = item
            if deltas:
                deadline.restart()
            for delta in deltas:
                yield delta
                deadline.restart()   # the time the reader spent away (pacing to the TTS) is not a stall
        if not finished:
            raise LLMError(f"LLM endpoint {self.url} closed the stream before the answer was complete")

    async def _read_line(self, response: aiohttp.ClientResponse, cancel: asyncio.Event,
                         deadline: "_Deadline") -> object:
        """One stripped line, `_DONE` at the end of the body, or None once cancelled."""
        try:
            raw = await _unless_cancelled(response.content.readline(), cancel, deadline,
                                          self._stalled("token"))
        except aiohttp.ClientError as exc:
            raise LLMError(f"LLM endpoint {self.url} broke the stream: {type(exc).__name__}: {exc}") from exc
        if raw is None:
            return None
        if raw == b"":
            return _DONE
        return raw.decode("utf-8", errors="replace").strip()

    def _parse_event(self, line: str, counts: "_Counts") -> object:
        """(deltas, finished) for a chunk; None for lines to skip; `_DONE` for `data: [DONE]`. A chunk's
        `usage` (the last one's, with `include_usage`) goes into `counts`."""
        if not line or line.startswith(":") or line.startswith(("event:", "id:", "retry:")):
            return None  # blank separators, keep-alive comments, SSE fields we do not need
        if not line.startswith("data:"):
            raise LLMError(f"LLM endpoint {self.url} sent a line that is not SSE: {line[:120]!r}")
        data = line[5:].strip()
        if data == "[DONE]":
            return _DONE
        chunk = self._json(data)
        if "error" in chunk:
            raise LLMError(f"LLM endpoint {self.url} reported an error: {_error_message(data)}")
        counts.read(chunk.get("usage"))
        choice = self._first_choice(chunk, data)
        delta = choice.get("delta") or {}
        content = delta.get("content") if isinstance(delta, dict) else None
        if content is not None and not isinstance(content, str):
            raise LLMError(f"LLM endpoint {self.url} sent a non-text delta: {data[:120]!r}")
        deltas: list[LLMDelta] = [content] if content else []
        if isinstance(delta, dict) and delta.get("tool_calls"):
            deltas.extend(self._tool_call_deltas(delta["tool_calls"], data))
        counts.came(deltas)
        return deltas, choice.get("finish_reason") is not None

    def _tool_call_deltas(self, pieces: Any, data: str) -> list[ToolCallDelta]:
        """`delta.tool_calls`: per piece an `index`, with `id` and `function.name` on a call's first piece and
        `function.arguments` text on any (OpenAI's streaming shape; a missing index means the first call)."""
        if not isinstance(pieces, list):
            raise LLMError(f"LLM endpoint {self.url} sent tool_calls that are not a list: {data[:120]!r}")
        out = []
        for i, piece in enumerate(pieces):
            function = piece.get("function") if isinstance(piece, dict) else None
            function = function if isinstance(function, dict) else {}
            index, call_id = piece.get("index", i) if isinstance(piece, dict) else i, None
            if isinstance(piece, dict) and isinstance(piece.get("id"), str):
                call_id = piece["id"]
            name, arguments = function.get("name"), function.get("arguments") or ""
            if not isinstance(index, int) or not isinstance(name, (str, type(None))) or not isinstance(arguments, str):
                raise LLMError(f"LLM endpoint {self.url} sent a malformed tool call: {data[:120]!r}")
            out.append(ToolCallDelta(index, call_id, name, arguments))
        return out

    async def _whole_answer(self, response: aiohttp.ClientResponse, cancel: asyncio.Event,
                            deadline: "_Deadline", counts: "_Counts") -> list[LLMDelta]:
        body = await _unless_cancelled(response.text(), cancel, deadline, self._stalled("the answer"))
        if body is None:
            return []
        answer = self._json(body)
        counts.read(answer.get("usage"))
        message = self._first_choice(answer, body).get("message")
        calls = message.get("tool_calls") if isinstance(message, dict) else None
        if not isinstance(message, dict) or not (isinstance(message.get("content"), str) or calls):
            raise LLMError(f"LLM endpoint {self.url} sent an answer without message.content: {body[:120]!r}")
        out: list[LLMDelta] = [message["content"]] if message.get("content") else []
        out += self._tool_call_deltas(calls, body) if calls else []
        counts.came(out)
        return out

    def _json(self, data: str) -> dict:
        try:
            value = json.loads(data)
        except ValueError:
            raise LLMError(f"LLM endpoint {self.url} sent something that is not JSON: {data[:120]!r}") from None
        if not isinstance(value, dict):
            raise LLMError(f"LLM endpoint {self.url} sent JSON that is not an object: {data[:120]!r}")
        return value

    def _first_choice(self, chunk: dict, data: str) -> dict:
        choices = chunk.get("choices")
        if not isinstance(choices, list) or (choices and not isinstance(choices[0], dict)):
            raise LLMError(f"LLM endpoint {self.url} sent a chunk without choices: {data[:120]!r}")
        return choices[0] if choices else {}  # an empty list is a usage-only chunk

    def _stalled(self, what: str) -> str:
        return f"LLM endpoint {self.url} stalled: no {what} within {self.token_timeout:g} s"


class _Counts:
    """One response's token counts as the server reported them (0 until it does), and what came back
    (its text and call arguments, for a `TokenCounter` when the server reports nothing)."""

    def __init__(self) -> None:
        self.input_tokens = 0
        self.output_tokens = 0
        self.sent = False          # the request reached the server (a response cancelled before costs nothing)
        self.reported = False      # the server sent `usage`
        self.text = ""

    def read(self, usage: Any) -> None:
        """A chat-completions `usage` object; anything else (absent, null, malformed) leaves the counts."""
        if not isinstance(usage, dict):
            return
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if isinstance(prompt, int) and isinstance(completion, int):
            self.input_tokens, self.output_tokens, self.reported = prompt, completion, True

    def came(self, deltas: list[LLMDelta]) -> None:
        for delta in deltas:
            self.text += delta if isinstance(delta, str) else (delta.name or "") + delta.arguments


class _Deadline:
    """The stall timer: restarted by every token, so a slow but steady answer never times out."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.restart()

    def restart(self) -> None:
        self.at = time.monotonic() + self.seconds

    def left(self) -> float:
        return max(0.0, self.at - time.monotonic())


async def _unless_cancelled(awaitable: Any, cancel: asyncio.Event, deadline: _Deadline,
                            stall_message: str) -> Any:
    """The awaitable's result; None if `cancel` is set first; LLMError if the deadline passes."""
    work = asyncio.ensure_future(awaitable)
    cancelled = asyncio.ensure_future(cancel.wait())
    try:
        done, _ = await asyncio.wait({work, cancelled}, timeout=deadline.left(),
                                     return_when=asyncio.FIRST_COMPLETED)
        if work in done:
            return work.result()
    finally:
        # Both are reaped whatever happened, the caller's own cancellation included: a read left
        # running would fail later as "Task exception was never retrieved".
        for task in (work, cancelled):
            task.cancel()
        await asyncio.gather(work, cancelled, return_exceptions=True)
    if cancel.is_set():
        return None
    raise LLMError(stall_message)


def _error_message(body: str) -> str:
    """The `error.message` of an OpenAI-style error body, else the body itself."""
    try:
        error = json.loads(body).get("error")
    except (ValueError, AttributeError):
        return body.strip()
    if isinstance(error, dict):
        return str(error.get("message") or error)
    return str(error or body).strip()
