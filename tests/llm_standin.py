"""A local OpenAI-compatible chat-completions server: the one stand-in the tests use, at a boundary
the project does not own (vLLM, llama.cpp server, Ollama...). It records every request, and its answer
depends on the last user message: FAIL -> HTTP 500, STALL -> stops after one token, GARBAGE -> not
SSE JSON; otherwise it streams back a reply, word by word, that names how many messages it got
(a long one when the message asks for something long).

When tools are offered (and `tool_choice` is not "none") it answers as a tool-calling model does, with
streamed `delta.tool_calls` (id and name first, the arguments in pieces): a user message gets "let me
check" (a long sentence more when it says long) and a call of the first tool (two calls when it says TWO)
with {"city": "Paris"}; a tool result
gets "the tool said <result>", or, when the result says CHAIN, one more call.

Asked for `stream_options: {"include_usage": true}`, it ends each answer with a usage-only chunk
(`choices: []`), as OpenAI and vLLM do: `prompt_tokens` is the words of the request's messages and
`completion_tokens` the chunks it streamed (one token each), both recorded in `usages`."""

from __future__ import annotations

import asyncio
import json
import threading

from aiohttp import web


class LLMStandIn:
    def __init__(self) -> None:
        self.requests: list[list[dict]] = []
        self.bodies: list[dict] = []           # every request body whole (tools, tool_choice, ...)
        self.usages: dict[int, dict] = {}      # request number -> the usage its answer ended with (if asked)
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def start(self) -> "LLMStandIn":
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._serve(), self._loop).result(10)
        return self

    async def _serve(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._complete)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)  # the STALL handler never ends by itself
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/v1"

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)

    async def _complete(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        messages = body["messages"]
        self.requests.append(messages)
        self.bodies.append(body)
        if body.get("tools") and body.get("tool_choice") != "none":
            return await self._tool_answer(request, body)
        last = messages[-1]["content"]
        if "FAIL" in last:
            return web.json_response({"error": {"message": "model is overloaded"}}, status=500)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        if "GARBAGE" in last:
            await response.write(b"data: this is not json\n\n")
            return response
        words = reply_for(len(messages), long="long" in last).split()
        for i, word in enumerate(words):
            if "STALL" in last and i == 1:
                await asyncio.sleep(5)  # far past the --llm-timeout the tests use
            chunk = {"choices": [{"delta": {"content": ("" if i == 0 else " ") + word}, "index": 0}]}
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
            await asyncio.sleep(0.01)
        await self._usage(response, body, len(words))
        await response.write(b"data: [DONE]\n\n")
        return response

    async def _usage(self, response: web.StreamResponse, body: dict, chunks: int) -> None:
        if not (body.get("stream_options") or {}).get("include_usage"):
            return
        prompt = sum(len(str(m.get("content") or "").split()) for m in body["messages"])
        usage = {"prompt_tokens": prompt, "completion_tokens": chunks, "total_tokens": prompt + chunks}
        self.usages[next(i for i, b in enumerate(self.bodies) if b is body)] = usage
        await response.write(f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n".encode())


    async def _tool_answer(self, request: web.Request, body: dict) -> web.StreamResponse:
        messages, tools = body["messages"], body["tools"]
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        last = messages[-1]
        sent = 0

        async def send(delta: dict, finish: str | None = None) -> None:
            nonlocal sent
            sent += bool(delta)
            chunk = {"choices": [{"delta": delta, "index": 0, "finish_reason": finish}]}
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
            await asyncio.sleep(0.01)

        if last["role"] == "tool" and "CHAIN" not in last["content"]:
            for i, word in enumerate(f"the tool said {last['content']}".split()):
                await send({"content": ("" if i == 0 else " ") + word})
            await send({}, "stop")
        else:
            await send({"content": "let me check" + (LONG_PREAMBLE if "long" in str(last.get("content")) else "")})
            name = tools[0]["function"]["name"]
            for index in range(2 if "TWO" in str(last.get("content")) else 1):
                call_id = f"call_{len(self.requests)}_{index}"
                await send({"tool_calls": [{"index": index, "id": call_id, "type": "function",
                                            "function": {"name": name, "arguments": ""}}]})
                for piece in ('{"city"', ': "Par', 'is"}'):
                    await send({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
            await send({}, "tool_calls")
        await self._usage(response, body, sent)
        await response.write(b"data: [DONE]\n\n")
        return response


LONG_PREAMBLE = " and while I look it up let me tell you a long story about the weather" * 3


def reply_for(n_messages: int, long: bool) -> str:
    short = f"you sent {n_messages} messages and here is a short answer"
    if not long:
        return short
    return " ".join([short] + ["and this long answer goes on for a while so that there is time to cut it"] * 3)
