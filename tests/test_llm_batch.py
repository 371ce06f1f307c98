"""The in-process LLM's continuous batching (tiny preset, real transformers model, CPU): every turn in
flight decodes in one forward pass per step; a turn joins at the next step and leaves (its cache rows
freed) at the next step once it ends or is cancelled; one turn's failure is that turn's only."""

from __future__ import annotations

import asyncio

import pytest
import torch

from duplex.models.llm import ChatMessage, LLMError, OpenAICompatibleLLM, TransformersLLM, load_llm
from duplex.server.process import ServerProcess

from .test_llm import StandIn, chunk, sse


def history(i: int) -> list[ChatMessage]:
    return [ChatMessage("system", "You are a helpful voice assistant."),
            ChatMessage("user", f"hello number {i}, tell me about music and the weather")]


@pytest.fixture(scope="module")
def llm():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # a 2-core machine shared with other work: one thread is faster and steady
    model = load_llm("tiny", "cpu")
    assert isinstance(model, TransformersLLM)
    yield model
    asyncio.run(model.close())
    torch.set_num_threads(threads)


async def collect(llm, messages, **kwargs) -> list[str]:
    kwargs.setdefault("temperature", 0.0)
    kwargs.setdefault("max_tokens", 30)
    kwargs.setdefault("cancel", asyncio.Event())
    return [delta async for delta in llm.stream(messages, **kwargs)]


async def test_a_turn_joining_a_step_later_gives_exactly_its_tokens_alone(llm):
    alone_a = await collect(llm, history(1), max_tokens=40)
    alone_b = await collect(llm, history(2), max_tokens=40)
    before = llm.stats()["max_rows"]
    a = llm.stream(history(1), temperature=0.0, max_tokens=40, cancel=asyncio.Event())
    got_a = [await a.__anext__()]            # A is in the batch and decoding
    b = llm.stream(history(2), temperature=0.0, max_tokens=40, cancel=asyncio.Event())
    got_b = [await b.__anext__()]            # B joined while A (unread, so still unfinished) waits its turn
    assert llm.stats()["rows"] == 2
    got_a += [d async for d in a]
    got_b += [d async for d in b]
    assert got_a == alone_a and got_b == alone_b
    assert llm.stats()["max_rows"] >= 2 and before <= llm.stats()["max_rows"]


async def test_sixteen_turns_at_once_each_as_alone(llm):
    alone = [await collect(llm, history(i), max_tokens=12 + i) for i in range(16)]
    steps = llm.stats()["steps"]
    together = await asyncio.gather(*(collect(llm, history(i), max_tokens=12 + i) for i in range(16)))
    assert together == alone                 # greedy: exact, and each turn's max_tokens is its own
    stats = llm.stats()
    assert stats["max_rows"] == 16 and stats["rows"] == 0 and llm.batch.cache is None
    assert stats["steps"] - steps < sum(12 + i for i in range(16)) // 4   # far fewer steps than tokens


async def test_max_tokens_is_per_turn(llm):
    before = llm.tokens_generated
    short, long = await asyncio.gather(collect(llm, history(3), max_tokens=3), collect(llm, history(4), max_tokens=25))
    assert llm.tokens_generated - before <= 3 + 25
    assert short == await collect(llm, history(3), max_tokens=3)
    assert long == await collect(llm, history(4), max_tokens=25)


async def test_a_seeded_sampled_turn_reproduces_whoever_is_alongside(llm):
    alone = await collect(llm, history(5), temperature=1.0, seed=11)
    neighbours = [collect(llm, history(i), temperature=0.8, max_tokens=50) for i in range(6)]
    together, *_ = await asyncio.gather(collect(llm, history(5), temperature=1.0, seed=11), *neighbours)
    assert together == alone
    assert alone != await collect(llm, history(5), temperature=1.0, seed=12)


async def test_a_cancelled_turn_leaves_the_batch_and_frees_its_cache(llm):
    cancels = [asyncio.Event() for _ in range(3)]
    streams = [llm.stream(history(i), temperature=0.0, max_tokens=200, cancel=cancels[i]) for i in range(3)]
    for stream in streams:
        await stream.__anext__()
    rows_before = [row for row in llm.batch.rows]
    assert len(rows_before) == 3
    oldest = rows_before[0]
    cancels[0].set()                         # the oldest row: its cache columns go too
    assert [d async for d in streams[0]] == []
    for _ in range(4):                       # each delta is a step past the cancel
        await streams[1].__anext__()
    await streams[2].aclose()                # closing the generator is a cancel too
    for _ in range(4):
        await streams[1].__anext__()
    rows = llm.batch.rows
    assert oldest not in rows and len(rows) == 1 and rows[0] is rows_before[1]
    cache = llm.batch.cache
    assert cache is not None
    for layer in cache.layers:               # one row left, and no column that is padding for it
        assert layer.keys.shape[0] == 1 and layer.keys.shape[2] == llm.batch.mask.shape[1]
    assert bool(llm.batch.mask.all()) and llm.batch.mask.shape[1] == rows[0].position
    await streams[1].aclose()
    await collect(llm, history(0), max_tokens=1)   # a step after the close
    assert llm.batch.rows == [] and llm.batch.cache is None


async def test_a_history_past_the_context_is_trimmed_not_an_error(llm):
    long = [ChatMessage("system", "You are a helpful voice assistant.")]
    for i in range(200):                     # far past the tiny model's 2048 positions
        long += [ChatMessage("user", f"question {i} about music and weather and the sea"),
                 ChatMessage("assistant", f"answer {i} about the hills and the rain")]
    long.append(ChatMessage("user", "the last question"))
    assert len(llm.tokenizer(llm.render_prompt(long))["input_ids"]) > llm.max_positions
    ids = llm.prompt_ids(long, 30)
    assert len(ids) <= llm.max_positions - 30
    text = llm.tokenizer.decode(ids)
    assert "helpful voice assistant" in text and "the last question" in text and "question 0 " not in text
    deltas = await collect(llm, long, max_tokens=30)
    assert deltas


async def test_a_turn_whose_sampling_fails_ends_alone(llm):
    """A temperature so small that logits / temperature overflow: NaN probabilities, and torch's
    multinomial raises. That turn gets an LLMError; the turns beside it are untouched."""
    alone = [await collect(llm, history(i), max_tokens=20) for i in range(3)]

    async def doomed():
        with pytest.raises(LLMError, match="RuntimeError"):
            await collect(llm, history(9), temperature=1e-45, max_tokens=20)

    results = await asyncio.gather(*(collect(llm, history(i), max_tokens=20) for i in range(3)), doomed())
    assert results[:3] == alone


async def test_a_failing_model_step_fails_only_the_turn_that_caused_it():
    """The model's forward raises when one turn reaches a position no other turn reaches (a fault in
    the transformers module itself, through a torch hook): the batched step fails, its rows are retried
    one by one, and only that turn ends with an LLMError; the others give exactly their tokens alone."""
    llm = load_llm("tiny", "cpu")
    assert isinstance(llm, TransformersLLM)
    doomed_history = history(0)[:1] + [ChatMessage("user", "tell me about the music " * 20)]
    alone = [await collect(llm, doomed_history, max_tokens=20)] + [
        await collect(llm, history(i), max_tokens=20) for i in (1, 2, 3)]
    fatal = len(llm.prompt_ids(doomed_history, 20)) + 3   # its fourth decoded token's position
    assert all(len(llm.prompt_ids(history(i), 20)) + 20 < fatal for i in (1, 2, 3))

    def fault(module, args, kwargs):
        positions = kwargs.get("position_ids")
        if positions is not None and kwargs["input_ids"].shape[1] == 1 and bool((positions == fatal).any()):
            raise RuntimeError("device fault")

    hook = llm.model.register_forward_pre_hook(fault, with_kwargs=True)
    try:
        async def doomed():
            got: list[str] = []
            with pytest.raises(LLMError, match="device fault"):
                async for delta in llm.stream(doomed_history, temperature=0.0, max_tokens=20, cancel=asyncio.Event()):
                    got.append(delta)
            assert got and "".join(alone[0]).startswith("".join(got))   # it failed mid-turn

        results = await asyncio.gather(doomed(), *(collect(llm, history(i), max_tokens=20) for i in (1, 2, 3)))
    finally:
        hook.remove()
    assert results[1:] == alone[1:]
    assert llm.stats()["max_rows"] >= 2
    assert await collect(llm, doomed_history, max_tokens=20) == alone[0]   # and the model goes on
    await llm.close()


async def test_close_ends_running_turns_and_waits_for_the_model_thread():
    llm = load_llm("tiny", "cpu")
    assert isinstance(llm, TransformersLLM)
    streams = [llm.stream(history(i), temperature=0.0, max_tokens=500, cancel=asyncio.Event()) for i in range(3)]
    for stream in streams:
        await stream.__anext__()
    await llm.close()
    assert llm._run is not None and llm._run.done()
    assert llm.batch.rows == [] and llm.batch.cache is None
    for stream in streams:                   # every reader ends (without error)
        assert len([d async for d in stream]) <= 2


async def test_an_endpoint_failing_one_request_mid_turn_fails_that_turn_only():
    async def handler(server, request):
        body = await request.json()
        response = await server.open_sse(request)
        words = ["one", " two", " three", " four", " five"]
        for i, word in enumerate(words):
            if "FAIL" in body["messages"][-1]["content"] and i == 2:
                await response.write(sse({"error": {"message": "the GPU fell over"}}))
                return response
            await response.write(sse(chunk(word)))
            await asyncio.sleep(0.01)
        await response.write(sse(chunk(finish="stop"), b"[DONE]"))
        return response

    async with StandIn(handler) as server:
        llm = OpenAICompatibleLLM(server.url, token_timeout=5)

        async def doomed():
            got: list[str] = []
            with pytest.raises(LLMError, match="the GPU fell over"):
                async for delta in llm.stream([ChatMessage("user", "FAIL please")], temperature=0.0,
                                              max_tokens=8, cancel=asyncio.Event()):
                    got.append(delta)
            assert got == ["one", " two"]

        results = await asyncio.gather(doomed(), *(collect(llm, history(i)) for i in range(3)))
        await llm.close()
    assert results[1:] == [["one", " two", " three", " four", " five"]] * 3


# --- the server: 4 cascade conversations' LLM turns in one batch ---------------------------------

@pytest.fixture(scope="module")
def batch_server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("llm-batch")
    server = ServerProcess("--preset", "tiny", "--no-duplex", "--cascade-slots", "4", "--llm-max-tokens", "80",
                           log_path=tmp / "server.log", log_level="info")
    yield server
    server.stop()


async def test_four_cascade_conversations_decode_in_one_batch(batch_server):
    from duplex.client import DuplexClient

    from .helpers import wait_until_health

    deltas = 12
    clients = [await DuplexClient.connect(batch_server.http_url, codec="pcm16") for _ in range(4)]
    try:
        for client in clients:
            await client.start(mode="cascade", config={"text_temperature": 0.0})
            await client.wait_for("status")
        await asyncio.gather(*(c.text_input(f"hello number {i}, tell me about music") for i, c in enumerate(clients)))

        async def first_deltas(client) -> list:
            return [await client.wait_for("llm_response", timeout=60) for _ in range(deltas)]

        received = await asyncio.gather(*(first_deltas(c) for c in clients))
        # Every conversation's first delta came before any conversation's twelfth: the four turns were
        # generated together (one at a time, a turn's 80 tokens would all come before the next's first).
        assert max(r[0].received_at for r in received) < min(r[-1].received_at for r in received)
        assert all(not e.data["is_complete"] for r in received for e in r)
        health = await wait_until_health(batch_server.http_url,
                                         lambda h: h["engines"]["cascade"]["llm_batch"]["max_rows"] == 4,
                                         "the four turns in one LLM step", timeout=30)
        assert health["engines"]["cascade"]["llm_batch"]["steps"] > 0
    finally:
        for client in clients:
            await client.close()
