"""`TransformersLLM`: a causal LM run in process with `transformers`, every turn in one batched step.

A hub repo id, a local directory in the hub layout, or the tiny preset, all through `from_pretrained`.
All conversations' turns decode together on the model's one thread (continuous batching,
`batch.DecodeBatch`): a turn joins at the next step and leaves at the next step once it ends or its
`cancel` is set (or its async generator is closed), freeing its cache rows.

Tools: the chat template renders them (`chat_prompt.py`), and the model's calls are read out of its text
as it streams (`tool_parse.ToolCallParser`: the Hermes/Qwen and SmolLM2 formats); a `tool_choice` that
requires a call, or names a function, forces the start of the answer.

Token usage: input tokens are the prompt's ids as the model is fed them (the rendered template, trimmed to
the context, plus a forced prefix); output tokens are the tokens sampled, the end-of-turn token included
(as vLLM counts `completion_tokens`). A cut turn counts what was sampled by the time its reader left.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
import typing as tp
from pathlib import Path
from typing import Any, AsyncGenerator, AsyncIterator

import torch

from ..spec import WEIGHTS_DIR, WeightsUnavailable
from ..tiny.llm import ensure_tiny_llm
from .base import ChatMessage, LLMDelta, LLMError, TokenUsage, ToolChoice
from .chat_prompt import forced_prefix, template_knows_tools, template_messages
from .tool_parse import ToolCallParser
from .batch import _DONE, MAX_AHEAD, DecodeBatch, TurnRequest

log = logging.getLogger(__name__)

__all__ = ["MAX_AHEAD", "TransformersLLM"]


class TransformersLLM:
    """A causal LM with a chat template; every turn in flight decodes in one forward pass per step.

    One thread per model (as the design asks for every model) runs the steps while there is work.
    `max_rows` caps the turns decoded together (None: no cap; 1: one turn at a time, the old path,
    kept for the benchmark); turns past it wait for a row and join as soon as one frees.
    """

    def __init__(self, model: Any, tokenizer: Any, *, name: str, seed: int | None = None,
                 max_rows: int | None = None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.seed = seed
        self.max_rows = max_rows
        self.device = next(model.parameters()).device
        self.eos_ids = _eos_ids(model, tokenizer)
        self.max_positions = int(getattr(model.config, "max_position_embeddings", 0) or 0)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.batch = DecodeBatch(self.model, self.eos_ids, pad_id=int(pad))
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"llm-{name}")
        self._lock = threading.Lock()           # guards _pending and _running
        self._pending: list[TurnRequest] = []   # turns waiting to join the batch
        self._running = False                   # a step loop is queued or running on the model thread
        self._run: concurrent.futures.Future | None = None   # that loop; `close` awaits it
        self._wake = threading.Event()          # a reader took a delta, went away, or a turn came
        self._closed = False

    @property
    def tokens_generated(self) -> int:
        """Tokens sampled, all turns (tests and metrics read it)."""
        return self.batch.tokens_generated

    def stats(self) -> dict:
        """Batch figures for /health: steps run, the most rows in one step, rows now, turns waiting."""
        return {"steps": self.batch.steps, "max_rows": self.batch.max_rows, "rows": len(self.batch.rows),
                "waiting": len(self._pending), "tokens": self.batch.tokens_generated}

    @classmethod
    def from_spec(cls, spec: str, device: str = "cpu", seed: int | None = None,
                  max_rows: int | None = None) -> "TransformersLLM":
        """`tiny`, a hub repo id (downloaded into the HF cache) or a local directory."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        directory = _local_directory(spec)
        # bf16 halves memory and is what these models ship in; CPUs are faster and exact in fp32.
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
        try:
            tokenizer = AutoTokenizer.from_pretrained(directory)
            model = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype)
            tp.cast(torch.nn.Module, model).to(device)  # transformers types `.to` through a decorator mypy misreads
        except (OSError, ValueError) as exc:
            raise WeightsUnavailable(f"could not load LLM {spec!r} from {directory}: {exc}") from exc
        if tokenizer.chat_template is None:
            raise WeightsUnavailable(f"LLM {spec!r} has no chat template: use an instruct/chat model")
        log.info("LLM %s loaded on %s (%s)", spec, device, dtype)
        return cls(model, tokenizer, name=spec, seed=seed, max_rows=max_rows)

    async def close(self) -> None:
        """Ends every turn (each leaves the batch at the next step) and waits for the step loop."""
        self._closed = True
        self._wake.set()
        if self._run is not None:
            await asyncio.wrap_future(self._run)
        self._executor.shutdown(wait=True, cancel_futures=True)

    def render_prompt(self, messages: list[ChatMessage], tools: list[dict] | None = None) -> str:
        """The exact text the model sees: history, system prompt and tools through the chat template."""
        native = template_knows_tools(self.tokenizer.chat_template)
        extra = {"tools": tools} if tools and native else {}
        return self.tokenizer.apply_chat_template(
            template_messages(messages, tools, native), tokenize=False, add_generation_prompt=True, **extra,
        )

    def prompt_ids(self, messages: list[ChatMessage], max_tokens: int, tools: list[dict] | None = None) -> list[int]:
        """Token ids of the prompt, dropping the oldest turns (never the system prompt) to fit."""
        messages = list(messages)
        budget = self.max_positions - max_tokens if self.max_positions else None
        while True:
            ids = self.tokenizer(self.render_prompt(messages, tools), add_special_tokens=False)["input_ids"]
            if budget is None or len(ids) <= budget:
                return ids
            droppable = [i for i, m in enumerate(messages) if m.role != "system"]
            if len(droppable) <= 1:
                return ids[-max(1, budget):]  # a single huge turn: keep its end, nearest the answer
            del messages[droppable[0]]

    def forced_prefix(self, tools: list[dict] | None, tool_choice: ToolChoice | None) -> str:
        """The text the answer is made to start with (a `tool_choice` that requires or names a call)."""
        return forced_prefix(tools, tool_choice)

    async def stream(self, messages: list[ChatMessage], *, temperature: float, max_tokens: int,
                     cancel: asyncio.Event, seed: int | None = None, tools: list[dict] | None = None,
                     tool_choice: ToolChoice | None = None, usage: TokenUsage | None = None,
                     top_k: int | None = None) -> AsyncIterator[LLMDelta]:
        if cancel.is_set() or self._closed:
            if usage is not None:
                usage.add(0, 0)
            return
        if tool_choice == "none":
            tools = None
        parser = ToolCallParser() if tools else None
        prefix = self.forced_prefix(tools, tool_choice)
        # aclosing: a reader that goes away closes the inner generator at once, so its turn leaves the batch
        text_deltas = self._text(messages, temperature, max_tokens, cancel, seed, tools, prefix, usage, top_k)
        async with contextlib.aclosing(text_deltas) as text:
            if parser is None:
                async for delta in text:
                    yield delta
                return
            for item in parser.feed(prefix):
                yield item
            async for delta in text:
                for item in parser.feed(delta):
                    yield item
        if not cancel.is_set():
            for item in parser.finish():
                yield item

    async def _text(self, messages: list[ChatMessage], temperature: float, max_tokens: int, cancel: asyncio.Event,
                    seed: int | None, tools: list[dict] | None, prefix: str,
                    usage: TokenUsage | None = None, top_k: int | None = None) -> AsyncGenerator[str, None]:
        """The model's text deltas, after `prefix` (already part of the answer, fed as prompt); the turn's
        token counts go into `usage` when it ends."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        gone = threading.Event()   # set when the reader goes away (generator closed or cancelled)
        # Backpressure: a turn runs at most MAX_AHEAD deltas ahead of its reader (past that it sits steps
        # out), so a turn that is cut costs at most that many wasted tokens, however slow the loop is.
        counts = {"emitted": 0, "read": 0}

        def emit(item: object) -> None:
            if isinstance(item, str):
                counts["emitted"] += 1
            with contextlib.suppress(RuntimeError):  # the loop may already be closed at shutdown
                loop.call_soon_threadsafe(queue.put_nowait, item)

        if self.max_positions:  # room for at least half a context of prompt
            max_tokens = min(max_tokens, self.max_positions // 2)
        turn = TurnRequest(
            ids=self.prompt_ids(messages, max_tokens, tools)
            + (self.tokenizer(prefix, add_special_tokens=False)["input_ids"] if prefix else []),
            temperature=temperature, max_tokens=max(1, max_tokens), top_k=top_k,
            generator=_make_generator(seed if seed is not None else self.seed, self.device),
            # asyncio.Event.is_set only reads a bool: safe from the model thread, which then sees an
            # interruption at the very next step without a hop through the loop.
            should_stop=lambda: gone.is_set() or cancel.is_set() or self._closed,
            emit=emit, room=lambda: counts["emitted"] - counts["read"] < MAX_AHEAD,
            decoder=_IncrementalDecoder(self.tokenizer),
        )
        self._submit(turn)
        try:
            while True:
                item = await _next_unless_cancelled(queue, cancel)
                if item is _DONE or item is None:
                    return
                if isinstance(item, BaseException):
                    raise LLMError(f"LLM {self.name} failed: {type(item).__name__}: {item}") from item
                counts["read"] += 1
                self._wake.set()
                yield tp.cast(str, item)
        finally:
            gone.set()
            self._wake.set()
            if usage is not None:
                usage.add(len(turn.ids), turn.generated)

    def _submit(self, turn: TurnRequest) -> None:
        """Queues `turn` to join the batch; starts the step loop on the model thread if it is idle."""
        with self._lock:
            self._pending.append(turn)
            start, self._running = not self._running, True
        self._wake.set()
        if start:
            self._run = self._executor.submit(self._steps)

    def _steps(self) -> None:
        """Model thread: admit waiting turns, one batched step, drop ended turns; until none is left."""
        try:
            while True:
                with self._lock:
                    gone = [t for t in self._pending if t.should_stop()]
                    room = len(self._pending) if self.max_rows is None else self.max_rows - len(self.batch.rows)
                    joining = [t for t in self._pending if t not in gone][:max(0, room)]
                    self._pending = [t for t in self._pending if t not in gone and t not in joining]
                    if not joining and not self.batch.rows and not gone:
                        self._running = False
                        return
                for turn in gone:
                    turn.emit(_DONE)
                for turn in joining:
                    self.batch.admit(turn)
                self.batch.drop_done()
                if self.batch.rows and self.batch.step() == 0:
                    self._wake.wait(0.05)   # every reader is MAX_AHEAD behind: wait for one to read
                    self._wake.clear()
                self.batch.drop_done()
        except BaseException as exc:  # a bug in the loop itself: no reader may wait forever
            log.exception("LLM step loop failed")
            self._fail_everything(exc)
            raise

    def _fail_everything(self, exc: BaseException) -> None:
        with self._lock:
            turns = self._pending + [row.turn for row in self.batch.rows]
            self._pending, self._running = [], False
        self.batch = DecodeBatch(self.model, self.eos_ids, pad_id=self.batch.pad_id)
        for turn in turns:
            turn.emit(exc)
            turn.emit(_DONE)


# What a causal LM needs from a hub repo; repos often also hold ONNX/GGUF copies we must not fetch.
_HUB_FILES = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model", "*.tiktoken"]


def _local_directory(spec: str) -> str:
    """The tiny preset, a local directory, or a hub repo id downloaded once into the HF cache."""
    if spec == "tiny":
        return str(ensure_tiny_llm(WEIGHTS_DIR / "tiny-llm"))
    path = Path(spec).expanduser()
    if path.is_dir():
        return str(path)
    if path.exists() or spec.startswith((".", "/", "~")):
        raise WeightsUnavailable(f"{spec!r} is not a model directory (expected config.json + safetensors + tokenizer)")
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import HfHubHTTPError

    log.info("fetching LLM %s from the Hugging Face hub", spec)
    try:  # one download step with huggingface_hub's progress bars; from_pretrained then stays local
        return snapshot_download(spec, allow_patterns=_HUB_FILES)
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise WeightsUnavailable(
            f"could not get LLM {spec!r} from the Hugging Face hub ({type(exc).__name__}: {exc}).\n"
            "  - check the network, or set HF_HUB_OFFLINE=1 to use what is already cached;\n"
            "  - or pass a local directory saved with save_pretrained;\n"
            "  - or use `tiny` (random weights generated locally) or an http(s):// endpoint."
        ) from exc


async def _next_unless_cancelled(queue: asyncio.Queue, cancel: asyncio.Event) -> object:
    """The next queued item, or None as soon as `cancel` is set (even mid forward pass)."""
    if cancel.is_set():
        return None
    if not queue.empty():
        return queue.get_nowait()
    get = asyncio.ensure_future(queue.get())
    cancelled = asyncio.ensure_future(cancel.wait())
    try:
        await asyncio.wait({get, cancelled}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        cancelled.cancel()
        if not get.done():
            get.cancel()
    return None if cancel.is_set() or get.cancelled() else get.result()


def _make_generator(seed: int | None, device: torch.device) -> torch.Generator | None:
    # A generator per turn, not the global RNG: concurrent turns and other models cannot shift it.
    if seed is None:
        return None
    return torch.Generator(device=device).manual_seed(seed)


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    """Every id that ends a turn: the generation config may list several (e.g. <|im_end|> too)."""
    ids: set[int] = set()
    for value in (getattr(model.generation_config, "eos_token_id", None), tokenizer.eos_token_id,
                  tokenizer.convert_tokens_to_ids("<|im_end|>") if "<|im_end|>" in tokenizer.get_vocab() else None):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return ids


class _IncrementalDecoder:
    """Turns token ids into text deltas. Decoding the whole answer each time keeps spaces and
    merged pieces right; a trailing U+FFFD means a multi-byte character is not complete yet."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.sent = 0  # characters already emitted

    def push(self, token: int) -> str:
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            return ""
        delta, self.sent = text[self.sent:], len(text)
        return delta

    def flush(self) -> str:
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        delta, self.sent = text[self.sent:], len(text)
        return delta
