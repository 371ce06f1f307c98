"""The voice-agent frameworks as real clients of /v1/realtime (test-only dependencies, the `frameworks`
extra): LiveKit's `RealtimeModel.session()` driven directly, as LiveKit's AgentSession drives it
(instructions, the chat context, generate_reply), with a plain typed turn."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from .llm_standin import reply_for
from .test_cascade import next_request


async def test_livekit_realtime_model_answers_a_plain_turn(cascade_server, llm_standin):
    lk_openai = pytest.importorskip("livekit.plugins.openai")
    from livekit.agents import llm

    async with aiohttp.ClientSession() as http:
        model = lk_openai.realtime.RealtimeModel(model="cascade", base_url=cascade_server.http_url + "/v1",
                                                 api_key="unused", http_session=http)
        session = model.session()
        errors: list = []
        session.on("error", errors.append)
        try:
            await session.update_instructions("Be brief.")
            chat_ctx = llm.ChatContext()
            chat_ctx.add_message(role="user", content="hello there")
            await session.update_chat_ctx(chat_ctx)
            n = len(llm_standin.requests)
            generation = await asyncio.wait_for(session.generate_reply(), 30)
            request = await next_request(llm_standin, n)
            assert request[0] == {"role": "system", "content": "Be brief."}
            assert request[-1] == {"role": "user", "content": "hello there"}
            text, frames = "", 0
            async for message in generation.message_stream:
                async def audio(stream=message.audio_stream) -> int:
                    return sum([1 async for _ in stream])
                counting = asyncio.create_task(audio())
                async for delta in message.text_stream:
                    text += delta
                frames = await asyncio.wait_for(counting, 30)
            assert text.strip() == reply_for(2, long=False) and frames > 0
            assert not errors, errors
        finally:
            await session.aclose()
            await model.aclose()
