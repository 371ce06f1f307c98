"""`TransformersLLM`: a causal LM run in process with `transformers`, streaming and cancellable.

A hub repo id, a local directory in the hub layout, or the tiny preset, all through `from_pretrained`.
One worker thread decodes token by token; setting `cancel` (or closing the async generator) stops it
within about one token, so a barge-in frees the model at once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
import typing as tp
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import torch

from ..spec import WEIGHTS_DIR, WeightsUnavailable
from ..tiny.llm import ensure_tiny_llm
from .base import ChatMessage, LLMError

log = logging.getLogger(__name__)


# --- in-process transformers model -------------------------------------------------------------

_DONE = object()
MAX_AHEAD = 2  # deltas the generation thread may hold before the consumer takes them


class TransformersLLM:
    """A causal LM with a chat template, decoded token by token on one worker thread.

    One thread per model (as the design asks for every model): turns from several sessions queue
    up rather than fight over the CPU; a cancelled turn that is still queued never starts.
    """

    def __init__(self, model: Any, tokenizer: Any, *, name: str, seed: int | None = None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.seed = seed
        self.device = next(model.parameters()).device
        self.eos_ids = _eos_ids(model, tokenizer)
        self.max_positions = int(getattr(model.config, "max_position_embeddings", 0) or 0)
        self.tokens_generated = 0  # all turns; tests and metrics read it
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"llm-{name}")
        self._generations: set[asyncio.Future] = set()   # kept until done; `close` waits for them

    @classmethod
    def from_spec(cls, spec: str, device: str = "cpu", seed: int | None = None) -> "TransformersLLM":
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
        return cls(model, tokenizer, name=spec, seed=seed)

    async def close(self) -> None:
        """Waits for the generations still running (each stops within a token of its `cancel`)."""
        await asyncio.gather(*self._generations, return_exceptions=True)
        self._executor.shutdown(wait=False, cancel_futures=True)

    def render_prompt(self, messages: list[ChatMessage]) -> str:
        """The exact text the model sees: history and system prompt through the chat template."""
        return self.tokenizer.apply_chat_template(
            [{"role": m.role, "content": m.content} for m in messages],
            tokenize=False, add_generation_prompt=True,
        )

    def prompt_ids(self, messages: list[ChatMessage], max_tokens: int) -> list[int]:
        """Token ids of the prompt, dropping the oldest turns (never the system prompt) to fit."""
        messages = list(messages)
        budget = self.max_positions - max_tokens if self.max_positions else None
        while True:
            ids = self.tokenizer(self.render_prompt(messages), add_special_tokens=False)["input_ids"]
            if budget is None or len(ids) <= budget:
                return ids
            droppable = [i for i, m in enumerate(messages) if m.role != "system"]
            if len(droppable) <= 1:
                return ids[-max(1, budget):]  # a single huge turn: keep its end, nearest the answer
            del messages[droppable[0]]

    async def stream(self, messages: list[ChatMessage], *, temperature: float, max_tokens: int,
                     cancel: asyncio.Event, seed: int | None = None) -> AsyncIterator[str]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        stop = threading.Event()  # set when the consumer goes away (generator closed)
        # Backpressure: the worker runs at most MAX_AHEAD deltas ahead of its consumer, so a turn that
        # is cut costs at most that many wasted tokens, however slow the event loop is at that moment.
        ahead = threading.Semaphore(MAX_AHEAD)

        def emit(item: object) -> None:
            if isinstance(item, str):
                while not ahead.acquire(timeout=0.05):
                    if stop.is_set() or cancel.is_set():
                        return
            with contextlib.suppress(RuntimeError):  # the loop may already be closed at shutdown
                loop.call_soon_threadsafe(queue.put_nowait, item)

        def should_stop() -> bool:
            # asyncio.Event.is_set only reads a bool: safe from the worker thread, and it lets the
            # thread see an interruption at the very next token without a hop through the loop.
            return stop.is_set() or cancel.is_set()

        if self.max_positions:  # room for at least half a context of prompt
            max_tokens = min(max_tokens, self.max_positions // 2)
        ids = self.prompt_ids(messages, max_tokens)
        generator = _make_generator(seed if seed is not None else self.seed, self.device)
        generation = loop.run_in_executor(self._executor, self._generate_safely, ids, temperature, max_tokens,
                                          generator, should_stop, emit)
        self._generations.add(generation)   # its outcome reaches the consumer as an item (see emit)
        generation.add_done_callback(self._generations.discard)
        try:
            while True:
                item = await _next_unless_cancelled(queue, cancel)
                if item is _DONE or item is None:
                    return
                if isinstance(item, BaseException):
                    raise LLMError(f"LLM {self.name} failed: {type(item).__name__}: {item}") from item
                ahead.release()
                yield tp.cast(str, item)
        finally:
            stop.set()

    def _generate_safely(self, ids: list[int], temperature: float, max_tokens: int,
                         generator: torch.Generator | None, should_stop: Callable[[], bool],
                         emit: Callable[[object], None]) -> None:
        """Worker-thread body: every outcome, failure included, reaches the consumer as an item."""
        try:
            self._generate(ids, temperature, max_tokens, generator, should_stop, emit)
        except Exception as exc:  # noqa: BLE001 - handed to the consumer, raised there as LLMError
            log.exception("LLM generation failed")
            emit(exc)
        finally:
            emit(_DONE)

    @torch.inference_mode()
    def _generate(self, ids: list[int], temperature: float, max_tokens: int,
                  generator: torch.Generator | None, should_stop: Callable[[], bool],
                  emit: Callable[[object], None]) -> None:
        """Decodes one token per forward pass with the KV cache, checking `should_stop` between."""
        decoder = _IncrementalDecoder(self.tokenizer)
        inputs = torch.tensor([ids], device=self.device)  # [1, T]
        past = None
        for _ in range(max_tokens):
            if should_stop():
                return
            # logits_to_keep=1: only the last position's logits; a long prompt times a 150k-token
            # vocabulary would otherwise cost gigabytes at prefill.
            out = self.model(input_ids=inputs, past_key_values=past, use_cache=True, logits_to_keep=1)
            past = out.past_key_values
            token = _sample(out.logits[0, -1].float(), temperature, generator)  # logits: [V]
            self.tokens_generated += 1
            if token in self.eos_ids:
                break
            delta = decoder.push(token)
            if delta:
                emit(delta)
            inputs = torch.tensor([[token]], device=self.device)  # [1, 1]
        tail = decoder.flush()
        if tail:
            emit(tail)


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


def _sample(logits: torch.Tensor, temperature: float, generator: torch.Generator | None) -> int:
    """Greedy at temperature <= 0, else a draw from softmax(logits / temperature)."""
    if temperature <= 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits / temperature, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


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
