"""Token usage through the LLM seam (`TokenUsage`): what each backend counts, summed over an answer's LLM
calls, in `/v1/realtime`'s `response.done` `usage` and in `/ws`'s per-turn `metrics`.

The endpoint backend reads the `usage` a server sends when asked `stream_options.include_usage` (the stand-in
counts its streamed chunks as tokens); the in-process backend counts the prompt ids it feeds and the tokens
it samples (checked against the batch's own counter)."""

from __future__ import annotations

import asyncio
import json

import pytest
from aiohttp import web

from duplex.models.llm import OpenAICompatibleLLM, TokenUsage, TransformersLLM, load_llm
from duplex.models.llm.token_count import TokenCounter
from duplex.models.spec import WEIGHTS_DIR
from duplex.models.tiny.llm import ensure_tiny_llm
from duplex.server.process import ServerProcess

from .test_cascade import next_request
from .test_llm import HISTORY, StandIn, chunk, sse
from .test_realtime import realtime, text_turn
from .test_realtime_tools import answer, respond, with_tools
from .test_tools_ws import assistant_final, tool_conversation


async def drain(llm, usage: TokenUsage, **kwargs) -> str:
    kwargs.setdefault("temperature", 0.0)
    kwargs.setdefault("max_tokens", 12)
    return "".join([d async for d in llm.stream(HISTORY, cancel=asyncio.Event(), usage=usage, **kwargs)
                    if isinstance(d, str)])


# --- the endpoint backend ---------------------------------------------------------------------------

async def answer_with_usage(server, request):
    """vLLM's shape: `usage: null` on every chunk, then a usage-only chunk (`choices: []`) before [DONE]."""
    response = await server.open_sse(request)
    chunks = [{**chunk(text), "usage": None} for text in ("Hello", ", ", "world.")]
    await response.write(sse(*chunks, chunk(finish="stop"),
                             {"choices": [], "usage": {"prompt_tokens": 17, "completion_tokens": 4, "total_tokens": 21}},
                             b"[DONE]"))
    return response


async def answer_without_usage(server, request):
    response = await server.open_sse(request)
    await response.write(sse(chunk("Hi."), chunk(finish="stop"), b"[DONE]"))
    return response


async def test_the_endpoint_backend_asks_for_usage_and_sums_what_the_server_reports():
    usage = TokenUsage()
    async with StandIn(answer_with_usage) as server:
        llm = OpenAICompatibleLLM(server.url, token_timeout=5)
        assert await drain(llm, usage) == "Hello, world."
        assert (usage.input_tokens, usage.output_tokens, usage.responses) == (17, 4, 1)
        await drain(llm, usage)                   # one object over two calls: the sum
        await llm.close()
    assert (usage.input_tokens, usage.output_tokens, usage.responses) == (34, 8, 2)
    assert all(body["stream_options"] == {"include_usage": True} for body, _ in server.requests)
    async with StandIn(answer_without_usage) as server:   # a server that ignores the option: 0, documented
        llm = OpenAICompatibleLLM(server.url, token_timeout=5)
        assert await drain(llm, usage) == "Hi."
        await llm.close()
    assert (usage.input_tokens, usage.output_tokens, usage.responses) == (34, 8, 3)


async def test_a_server_that_refuses_stream_options_is_asked_again_without_it_and_never_with_it_again():
    async def older_server(server, request):
        if "stream_options" in server.requests[-1][0]:
            return web.json_response({"error": {"message": "Unrecognized request argument supplied: stream_options"}},
                                     status=400)
        return await answer_without_usage(server, request)

    usage = TokenUsage()
    async with StandIn(older_server) as server:
        llm = OpenAICompatibleLLM(server.url, token_timeout=5)
        assert await drain(llm, usage) == "Hi." and await drain(llm, usage) == "Hi."
        await llm.close()
    assert ["stream_options" in body for body, _ in server.requests] == [True, False, False]
    assert (usage.input_tokens, usage.output_tokens, usage.responses) == (0, 0, 2)   # no usage, no local tokenizer


async def test_the_endpoint_backend_reads_the_usage_of_a_whole_json_answer():
    async def whole(server, request):
        return web.json_response({"choices": [{"message": {"role": "assistant", "content": "Hi there."}}],
                                  "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}})

    usage = TokenUsage()
    async with StandIn(whole) as server:
        llm = OpenAICompatibleLLM(server.url)
        assert await drain(llm, usage) == "Hi there."
        await llm.close()
    assert (usage.input_tokens, usage.output_tokens) == (9, 3)


# --- the in-process backend --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_llm() -> TransformersLLM:
    llm = load_llm("tiny", "cpu", seed=7)
    assert isinstance(llm, TransformersLLM)
    return llm


async def test_the_in_process_backend_counts_the_prompt_it_feeds_and_the_tokens_it_samples(tiny_llm):
    alone = []
    for max_tokens in (5, 9):
        usage, before = TokenUsage(), tiny_llm.tokens_generated
        await drain(tiny_llm, usage, max_tokens=max_tokens)
        assert usage.input_tokens == len(tiny_llm.prompt_ids(HISTORY, max_tokens))
        assert usage.output_tokens == tiny_llm.tokens_generated - before and 0 < usage.output_tokens <= max_tokens
        alone.append(usage)
    # two turns decoded in one batch: each counts its own tokens, as it would alone
    together = [TokenUsage(), TokenUsage()]
    before = tiny_llm.tokens_generated
    await asyncio.gather(drain(tiny_llm, together[0], max_tokens=5), drain(tiny_llm, together[1], max_tokens=9))
    assert together == alone
    assert sum(u.output_tokens for u in together) == tiny_llm.tokens_generated - before


async def test_a_server_without_usage_is_counted_with_the_models_tokenizer_when_it_is_here(tiny_llm):
    """The endpoint serves a model whose tokenizer this machine has (here the tiny preset's directory as the
    model name): a response without `usage` is counted with it, as the in-process backend counts the same
    prompt; a server's own usage wins; a model whose tokenizer is not here counts 0 (the test above)."""
    directory = str(ensure_tiny_llm(WEIGHTS_DIR / "tiny-llm"))
    assert TokenCounter.load("no-such-org/no-such-model") is None and TokenCounter.load(None) is None
    usage = TokenUsage()
    async with StandIn(answer_without_usage) as server:
        llm = load_llm(server.url, model=directory)
        assert isinstance(llm, OpenAICompatibleLLM) and llm.counter is not None
        assert await drain(llm, usage) == "Hi."
        await llm.close()
    assert usage.input_tokens == len(tiny_llm.prompt_ids(HISTORY, 12))
    assert usage.output_tokens == len(tiny_llm.tokenizer("Hi.", add_special_tokens=False)["input_ids"]) > 0
    async with StandIn(answer_with_usage) as server:
        llm = load_llm(server.url, model=directory)
        reported = TokenUsage()
        await drain(llm, reported)
        await llm.close()
    assert (reported.input_tokens, reported.output_tokens) == (17, 4)


# --- through the server: the stand-in's counts, summed per answer ----------------------------------

async def test_realtime_response_done_carries_the_usage_of_its_llm_call(cascade_server, llm_standin):
    async with realtime(cascade_server, "cascade") as (connection, events):
        await with_tools(connection, events)
        n = len(llm_standin.requests)
        await text_turn(connection, events, "what is the weather")
        first = await events.wait_for("response.done", timeout=60)
        call = first.response.output[1]
        await answer(connection, events, call.call_id, "sunny in Paris")
        second = await respond(connection, events)
        await next_request(llm_standin, n + 1)
        for done, sent in ((first, llm_standin.usages[n]), (second, llm_standin.usages[n + 1])):
            usage = done.response.usage
            assert (usage.input_tokens, usage.output_tokens) == (sent["prompt_tokens"], sent["completion_tokens"])
            assert usage.total_tokens == sent["total_tokens"]
            assert usage.input_token_details.text_tokens == usage.input_tokens
            assert usage.output_token_details.text_tokens == usage.output_tokens
            assert usage.input_token_details.audio_tokens == usage.output_token_details.audio_tokens == 0
        assert first.response.usage.output_tokens == 1 + 1 + 3      # "let me check", the call's id and 3 pieces
        assert second.response.usage.output_tokens == len("the tool said sunny in Paris".split())


async def test_ws_metrics_sum_the_tokens_of_every_llm_call_of_the_turn(cascade_server, llm_standin):
    client, mic = await tool_conversation(cascade_server)
    try:
        n = len(llm_standin.requests)
        await client.text_input("what is the weather")
        await assistant_final(client)
        metrics = await client.wait_for("metrics", timeout=30)
        calls = [llm_standin.usages[n], llm_standin.usages[n + 1]]     # the call, then the answer with its result
        assert metrics.data["input_tokens"] == sum(u["prompt_tokens"] for u in calls)
        assert metrics.data["output_tokens"] == sum(u["completion_tokens"] for u in calls)
    finally:
        mic.close()
        await client.close()


# --- through the server: the in-process LLM's counts ------------------------------------------------

@pytest.fixture(scope="module")
def in_process_server(tmp_path_factory):
    server = ServerProcess("--preset", "tiny", "--no-duplex", "--cascade-slots", "2", "--llm-max-tokens", "16",
                           log_path=tmp_path_factory.mktemp("usage") / "server.log", log_level="info")
    yield server
    server.stop()


async def llm_tokens(http_url: str) -> int:
    import aiohttp

    async with aiohttp.ClientSession() as http, http.get(http_url + "/health") as response:
        return int(json.loads(await response.text())["engines"]["cascade"]["llm_batch"]["tokens"])


async def test_the_in_process_llm_counts_reach_ws_metrics_and_response_done(in_process_server):
    from duplex.client import DuplexClient

    client = await DuplexClient.connect(in_process_server.http_url, codec="pcm16")
    try:
        await client.start(mode="cascade", config={"seed": 1})   # sampled: greedy babble here is only newlines
        await client.wait_for("status")
        before = await llm_tokens(in_process_server.http_url)
        await client.text_input("hello there")
        metrics = await client.wait_for("metrics", timeout=60)
        assert metrics.data["output_tokens"] == await llm_tokens(in_process_server.http_url) - before
        assert 0 < metrics.data["output_tokens"] <= 16 and metrics.data["input_tokens"] > 0
    finally:
        await client.close()
    async with realtime(in_process_server, "cascade") as (connection, events):
        before = await llm_tokens(in_process_server.http_url)
        await text_turn(connection, events, "hello there")
        done = await events.wait_for("response.done", timeout=60)
        usage = done.response.usage
        assert usage.output_tokens == await llm_tokens(in_process_server.http_url) - before
        assert 0 < usage.output_tokens <= 16 and usage.input_tokens > 0
