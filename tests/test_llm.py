"""The LLM stage: the tiny transformers preset (real code path, random weights) and the
OpenAI-compatible client against a local stand-in server (a boundary the project does not own)."""

from __future__ import annotations

import asyncio
import json
import socket
import time

import pytest
from aiohttp import web

from duplex.models import spec
from duplex.models.llm import ChatMessage, LLMError, OpenAICompatibleLLM, TransformersLLM, load_llm
from duplex.models.llm.openai_compatible import completions_url
from duplex.models.tiny.llm import ensure_tiny_llm

HISTORY = [
    ChatMessage("system", "You are a helpful voice assistant."),
    ChatMessage("user", "hello how are you"),
    ChatMessage("assistant", "fine thank you"),
    ChatMessage("user", "tell me about music"),
]


@pytest.fixture(scope="module")
def tiny_llm() -> TransformersLLM:
    llm = load_llm("tiny", "cpu", seed=7)
    assert isinstance(llm, TransformersLLM)
    return llm


async def collect(llm, messages=HISTORY, **kwargs) -> list[str]:
    kwargs.setdefault("temperature", 1.0)
    kwargs.setdefault("max_tokens", 24)
    kwargs.setdefault("cancel", asyncio.Event())
    return [delta async for delta in llm.stream(messages, **kwargs)]


async def worker_idle(llm: TransformersLLM) -> None:
    """Returns once every generation queued on the model's worker thread has finished."""
    await asyncio.get_running_loop().run_in_executor(llm._executor, lambda: None)


# --- tiny transformers preset ------------------------------------------------------------------

async def test_tiny_model_streams_text_deltas(tiny_llm):
    before = tiny_llm.tokens_generated
    deltas = await collect(tiny_llm, max_tokens=24)
    assert len(deltas) > 3 and all(isinstance(d, str) and d for d in deltas)
    assert tiny_llm.tokens_generated - before <= 24  # babble is capped by max_tokens
    assert "<|im_end|>" not in "".join(deltas)  # special tokens never reach the text


def test_prompt_holds_system_prompt_and_history_in_order(tiny_llm):
    prompt = tiny_llm.render_prompt(HISTORY)
    positions = [prompt.index(m.content) for m in HISTORY]
    assert positions == sorted(positions)
    assert prompt.startswith("<|im_start|>system\nYou are a helpful voice assistant.<|im_end|>")
    assert prompt.endswith("<|im_start|>user\ntell me about music<|im_end|>\n<|im_start|>assistant\n")
    ids = tiny_llm.prompt_ids(HISTORY, max_tokens=16)
    assert tiny_llm.tokenizer.decode(ids) == prompt  # what the model reads is the rendered template


def test_long_history_drops_oldest_turns_but_keeps_the_system_prompt(tiny_llm, monkeypatch):
    full = len(tiny_llm.prompt_ids(HISTORY, max_tokens=8))
    monkeypatch.setattr(tiny_llm, "max_positions", full + 8 - 1)  # one token too many
    text = tiny_llm.tokenizer.decode(tiny_llm.prompt_ids(HISTORY, max_tokens=8))
    assert "helpful voice assistant" in text and "tell me about music" in text
    assert "hello how are you" not in text


async def test_same_seed_same_answer(tiny_llm):
    first = await collect(tiny_llm, seed=3)
    again = await collect(tiny_llm, seed=3)
    other = await collect(tiny_llm, seed=4)
    assert first == again and first != other
    assert await collect(tiny_llm, temperature=0.0) == await collect(tiny_llm, temperature=0.0)


async def test_top_k_one_makes_a_seeded_sampled_answer_the_greedy_one(tiny_llm):
    """`text_top_k` (the cascade's LLM top-k): 1 leaves only the likeliest token, whatever the seed and temperature."""
    greedy = await collect(tiny_llm, temperature=0.0)
    assert await collect(tiny_llm, seed=3) != greedy                          # sampling alone does differ
    assert await collect(tiny_llm, seed=3, top_k=1) == greedy
    assert await collect(tiny_llm, seed=4, temperature=3.0, top_k=1) == greedy
    wide = await collect(tiny_llm, seed=3, top_k=10**6)   # k >= V: every token, as without top_k
    assert wide == await collect(tiny_llm, seed=3)


async def test_cancel_stops_generation_within_a_token(tiny_llm):
    cancel = asyncio.Event()
    before = tiny_llm.tokens_generated
    received, after_cancel = 0, 0
    async for _ in tiny_llm.stream(HISTORY, temperature=1.0, max_tokens=400, cancel=cancel, seed=1):
        received += 1
        if cancel.is_set():
            after_cancel += 1
        if received == 3:
            cancel.set()
    await worker_idle(tiny_llm)
    assert after_cancel == 0
    # The worker thread saw the flag at the next token: far fewer than 400 tokens were computed.
    assert tiny_llm.tokens_generated - before <= received + 3


async def test_closing_the_generator_stops_generation(tiny_llm):
    before = tiny_llm.tokens_generated
    stream = tiny_llm.stream(HISTORY, temperature=1.0, max_tokens=400, cancel=asyncio.Event(), seed=1)
    for _ in range(3):
        await stream.__anext__()
    await stream.aclose()
    await worker_idle(tiny_llm)
    assert tiny_llm.tokens_generated - before <= 3 + 3


async def test_cancelled_before_start_computes_nothing(tiny_llm):
    cancel = asyncio.Event()
    cancel.set()
    before = tiny_llm.tokens_generated
    assert await collect(tiny_llm, cancel=cancel) == []
    await worker_idle(tiny_llm)
    assert tiny_llm.tokens_generated == before


def test_tiny_preset_is_deterministic_and_loads_from_a_local_directory(tmp_path, tiny_llm):
    a = ensure_tiny_llm(tmp_path / "a", seed=42)
    b = ensure_tiny_llm(tmp_path / "b", seed=42)
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    stamp = (a / "tiny.json").stat().st_mtime_ns
    assert ensure_tiny_llm(a, seed=42) == a and (a / "tiny.json").stat().st_mtime_ns == stamp  # reused
    local = TransformersLLM.from_spec(str(a))
    assert local.render_prompt(HISTORY) == tiny_llm.render_prompt(HISTORY)


def test_unreachable_hub_model_gives_advice(monkeypatch, tmp_path):
    from huggingface_hub import constants

    # huggingface_hub reads these at import time: patch the live values (no network retries).
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(spec.WeightsUnavailable) as error:
        load_llm("Qwen/Qwen2.5-0.5B-Instruct", "cpu")
    assert "local directory" in str(error.value) and "tiny" in str(error.value)
    with pytest.raises(spec.WeightsUnavailable):
        load_llm(str(tmp_path / "missing-dir"), "cpu")


# --- OpenAI-compatible client ------------------------------------------------------------------

def test_urls_and_dispatch():
    assert completions_url("http://h:8000") == "http://h:8000/v1/chat/completions"
    assert completions_url("http://h:11434/v1/") == "http://h:11434/v1/chat/completions"
    assert completions_url("https://h/api/chat/completions") == "https://h/api/chat/completions"
    llm = load_llm("http://127.0.0.1:9/v1", "cpu", model="m", api_key="k")
    assert isinstance(llm, OpenAICompatibleLLM) and llm.model == "m" and llm.api_key == "k"


def sse(*chunks: object) -> bytes:
    return b"".join(b"data: " + (c if isinstance(c, bytes) else json.dumps(c).encode()) + b"\n\n"
                    for c in chunks)


def chunk(content: str | None = None, finish: str | None = None, role: str | None = None) -> dict:
    delta = {k: v for k, v in (("role", role), ("content", content)) if v is not None}
    return {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


class StandIn:
    """A loopback aiohttp server whose /v1/chat/completions does what a test asks."""

    def __init__(self, handler):
        self.handler = handler
        self.requests: list[tuple[dict, dict]] = []
        self.disconnected = asyncio.Event()
        self.closing = asyncio.Event()  # lets stalling handlers end, so cleanup need not wait them out

    async def __aenter__(self) -> "StandIn":
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc) -> None:
        self.closing.set()
        await self.runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((await request.json(), dict(request.headers)))
        return await self.handler(self, request)

    async def open_sse(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        return response


async def good_answer(server, request):
    response = await server.open_sse(request)
    await response.write(b": keep-alive comment\n\n")
    await response.write(sse(chunk(role="assistant", content=""), chunk("Hello"), chunk(", "),
                             chunk("world."), chunk(finish="stop"), b"[DONE]"))
    return response


async def test_openai_streams_a_good_answer():
    async with StandIn(good_answer) as server:
        llm = OpenAICompatibleLLM(server.url, model="qwen", api_key="sekrit", token_timeout=5)
        deltas = await collect(llm, temperature=0.7, max_tokens=32, seed=5)
        await llm.close()
    assert deltas == ["Hello", ", ", "world."]
    body, headers = server.requests[0]
    assert body["stream"] is True and body["model"] == "qwen" and body["max_tokens"] == 32
    assert body["temperature"] == 0.7 and body["seed"] == 5 and "top_k" not in body   # no top-k asked: none sent
    assert body["messages"][0] == {"role": "system", "content": "You are a helpful voice assistant."}
    assert [m["content"] for m in body["messages"]] == [m.content for m in HISTORY]
    assert headers["Authorization"] == "Bearer sekrit"


async def test_openai_sends_top_k_only_when_asked():
    """vLLM's extra sampling parameter `top_k` (OpenAI's API has none): in the body when the turn asks for it."""
    async with StandIn(good_answer) as server:
        llm = OpenAICompatibleLLM(server.url, token_timeout=5)
        await collect(llm, temperature=0.7, top_k=5)
        await llm.close()
    assert server.requests[0][0]["top_k"] == 5


async def test_openai_endpoint_down():
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    llm = OpenAICompatibleLLM(f"http://127.0.0.1:{port}", connect_timeout=2)
    with pytest.raises(LLMError, match="cannot reach LLM endpoint"):
        await collect(llm)
    await llm.close()


async def test_openai_http_error_carries_status_and_message():
    async def fail(server, request):
        return web.json_response({"error": {"message": "model is overloaded"}}, status=500)

    async with StandIn(fail) as server:
        llm = OpenAICompatibleLLM(server.url)
        with pytest.raises(LLMError, match="HTTP 500: model is overloaded"):
            await collect(llm)
        await llm.close()


async def stall_after_one_token(server, request):
    response = await server.open_sse(request)
    await response.write(sse(chunk("Hel")))
    try:
        for _ in range(200):  # keep-alive comments only: they must not count as progress
            await asyncio.sleep(0.05)
            await response.write(b": ping\n\n")
    except (ConnectionResetError, ConnectionError):
        server.disconnected.set()
    return response


async def test_openai_stall_becomes_an_error_within_the_token_timeout():
    async with StandIn(stall_after_one_token) as server:
        llm = OpenAICompatibleLLM(server.url, token_timeout=0.5)
        deltas: list[str] = []
        started = time.monotonic()
        with pytest.raises(LLMError, match="stalled"):
            async for delta in llm.stream(HISTORY, temperature=1.0, max_tokens=8, cancel=asyncio.Event()):
                deltas.append(delta)
        assert deltas == ["Hel"] and time.monotonic() - started < 3
        await llm.close()


async def test_openai_a_reader_that_pauses_is_not_a_stall():
    """The cascade stops reading while its TTS has words enough (pacing): time spent away from the stream is
    not the endpoint's stall, even when the pause is far past the token timeout: the endpoint here sends its
    second token 2.2 s after the first, the reader is away 2 s after the first, and the timeout is 1 s."""
    async def slow_second_token(server, request):
        response = await server.open_sse(request)
        await response.write(sse(chunk(role="assistant", content="Hello")))
        await asyncio.sleep(2.2)
        await response.write(sse(chunk(" world."), chunk(finish="stop"), b"[DONE]"))
        return response

    async with StandIn(slow_second_token) as server:
        llm = OpenAICompatibleLLM(server.url, token_timeout=1.0)
        deltas: list[str] = []
        async for delta in llm.stream(HISTORY, temperature=1.0, max_tokens=8, cancel=asyncio.Event()):
            deltas.append(delta)
            if len(deltas) == 1:
                await asyncio.sleep(2.0)
        assert deltas == ["Hello", " world."]
        await llm.close()


async def test_openai_stall_before_headers_becomes_an_error():
    async def silent(server, request):
        await asyncio.wait_for(server.closing.wait(), 10)
        return web.Response()

    async with StandIn(silent) as server:
        llm = OpenAICompatibleLLM(server.url, token_timeout=0.3)
        with pytest.raises(LLMError, match="stalled"):
            await collect(llm)
        await llm.close()


async def test_openai_cancel_returns_at_once_and_drops_the_connection():
    async with StandIn(stall_after_one_token) as server:
        llm = OpenAICompatibleLLM(server.url, token_timeout=30)
        cancel = asyncio.Event()
        deltas = []
        async for delta in llm.stream(HISTORY, temperature=1.0, max_tokens=8, cancel=cancel):
            deltas.append(delta)
            asyncio.get_running_loop().call_later(0.1, cancel.set)
        assert deltas == ["Hel"]
        await asyncio.wait_for(server.disconnected.wait(), 5)  # the server learns to stop
        await llm.close()


@pytest.mark.parametrize("body, message", [
    (b"data: this is not json\n\n", "not JSON"),
    (sse({"unexpected": "shape"}), "without choices"),
    (b"<html>hello</html>\n", "not SSE"),
    (sse(chunk("half an answer")), "before the answer was complete"),
    (sse({"error": {"message": "context too long"}}), "context too long"),
])
async def test_openai_garbage_becomes_an_error(body, message):
    async def garbage(server, request):
        response = await server.open_sse(request)
        await response.write(body)
        return response

    async with StandIn(garbage) as server:
        llm = OpenAICompatibleLLM(server.url, token_timeout=2)
        with pytest.raises(LLMError, match=message):
            await collect(llm)
        await llm.close()


async def test_openai_non_streaming_json_answer_is_accepted():
    async def whole(server, request):
        return web.json_response({"choices": [{"message": {"role": "assistant", "content": "Hi there."}}]})

    async with StandIn(whole) as server:
        llm = OpenAICompatibleLLM(server.url + "/v1/chat/completions")
        assert await collect(llm) == ["Hi there."]
        await llm.close()
