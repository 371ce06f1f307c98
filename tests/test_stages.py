"""The cascade's per-stage latency (item 5 of issue 22): every stage of `CASCADE_STAGES` is stamped where it
happens, in order, for every turn; the turn's `metrics` carries them and `/metrics` exposes them as the
`duplex_cascade_stage_ms` histogram. Bound by events (messages, loop turns), never by timing."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from duplex.bench.latency import LiveMic
from duplex.client import DuplexClient
from duplex.engines.base import AssistantTurnEnded
from duplex.protocol import CASCADE_STAGES
from duplex.engines.cascade_turn import AssistantTurn
from duplex.models.llm import ChatMessage

from .conftest import espeak
from .test_cascade_turn import FakeEngine, frames

STAGE_KEYS = [f"{stage}_ms" for stage in CASCADE_STAGES]


class ScriptedLLM:
    """Yields each delta the test puts in `deltas` (None ends the reply)."""
    name = "scripted"

    def __init__(self):
        self.deltas: asyncio.Queue[str | None] = asyncio.Queue()

    async def stream(self, messages, *, temperature, max_tokens, cancel, seed=None, tools=None, tool_choice=None,
                     usage=None, top_k=None):
        while (delta := await self.deltas.get()) is not None:
            yield delta


async def loop_turns_until(predicate, turns: int = 200) -> None:
    """Lets the other tasks run, one loop turn at a time, until `predicate()` holds (at most `turns`)."""
    for _ in range(turns):
        if predicate():
            return
        await asyncio.sleep(0)
    raise AssertionError("the condition never held")


async def test_each_stage_is_stamped_at_its_event_in_order():
    llm = ScriptedLLM()
    engine, out, history = FakeEngine(llm), [], [ChatMessage("user", "hi")]
    now = time.monotonic()
    stages = {"user_end": now, "stt_final": now}
    turn = AssistantTurn(engine, out.append, history, stages, system_prompt="s", voice=None,
                         temperature=0.7, seed=None)
    await llm.deltas.put("Hel")                         # a token, not yet a whole word
    await loop_turns_until(lambda: "llm_first_token" in stages)
    assert "tts_first_words" not in stages
    await llm.deltas.put("lo ")                         # the space makes "Hello" a word for the TTS
    await loop_turns_until(lambda: "tts_first_words" in stages)
    turn.on_tts_frames([], turn.text_version)           # the TTS had nothing to give yet
    assert "tts_first_frame" not in stages
    turn.on_tts_frames(frames(2), turn.text_version)    # its first frames come back to the loop
    assert "tts_first_frame" in stages and "tts_first_audio" not in stages
    await loop_turns_until(lambda: "tts_first_audio" in stages)   # played out to the session
    await llm.deltas.put(None)
    await loop_turns_until(lambda: engine.turn.ended)
    engine.turn.finished = True
    turn.on_tts_frames([], turn.text_version)
    await asyncio.wait_for(turn.task, 5)
    ended = next(f for f in out if isinstance(f, AssistantTurnEnded))
    assert list(ended.stages) == STAGE_KEYS
    values = [ended.stages[key] for key in STAGE_KEYS]
    assert values == sorted(values) and values[0] >= 0, ended.stages


async def test_a_one_word_reply_reaches_the_tts_at_the_end_of_the_text():
    llm = ScriptedLLM()
    engine, out, history = FakeEngine(llm), [], [ChatMessage("user", "hi")]
    stages = {"user_end": time.monotonic()}
    AssistantTurn(engine, out.append, history, stages, system_prompt="s", voice=None, temperature=0.7, seed=None)
    await llm.deltas.put("Hi")
    await loop_turns_until(lambda: "llm_first_token" in stages)
    assert "tts_first_words" not in stages
    await llm.deltas.put(None)                          # end_text queues the last word
    await loop_turns_until(lambda: "tts_first_words" in stages)
    assert stages["tts_first_words"] >= stages["llm_first_token"]


# --- a real server on loopback (tiny STT and TTS, the LLM stand-in; and the tiny in-process LLM) ---------

@pytest.fixture(scope="module")
def hello(tmp_path_factory) -> np.ndarray:
    return espeak("Hello there, what is the weather like today?", tmp_path_factory.mktemp("s") / "h.wav")


async def stage_counts(http_url: str) -> dict[str, float]:
    async with aiohttp.ClientSession() as session:
        async with session.get(http_url + "/metrics") as response:
            assert response.status == 200
            text = await response.text()
    counts = {stage: 0.0 for stage in CASCADE_STAGES}
    for family in text_string_to_metric_families(text):
        if family.name == "duplex_cascade_stage_ms":
            for sample in family.samples:
                if sample.name == "duplex_cascade_stage_ms_count":
                    counts[sample.labels["stage"]] = sample.value
    return counts


@pytest.mark.parametrize("server_name", ["cascade_server", "tiny_server"])
async def test_a_spoken_turn_reports_ordered_stages_and_metrics_exposes_them(request, server_name, hello):
    server = request.getfixturevalue(server_name)
    before = await stage_counts(server.http_url)
    client = await DuplexClient.connect(server.http_url, codec="pcm16")
    mic = LiveMic(client)
    try:
        await client.start(mode="cascade", config={"seed": 1})
        assert (await client.wait_for("status", timeout=30)).data["mode"] == "cascade"
        mic.say(np.concatenate([np.zeros(4000, dtype=np.float32), hello]))
        metrics = await client.wait_for("metrics", timeout=90,
                                        predicate=lambda e: e.data.get("tts_first_audio_ms") is not None)
    finally:
        mic.close()
        await client.close()
    stages = [metrics.data.get(key) for key in STAGE_KEYS]
    assert None not in stages, metrics.data                   # every stage measured
    assert stages == sorted(stages) and stages[0] >= 0, metrics.data
    # the session sent this turn's metrics after observing its stages: /metrics has them now
    after = await stage_counts(server.http_url)
    for stage in CASCADE_STAGES:
        assert after[stage] >= before[stage] + 1, (stage, before, after)
