"""Parallel prefill of a persona prompt into one slot, and the cache of prefilled prompts.

PersonaPlex steps its prompt one frame per model step (~190 sequential steps for a 10 s voice and a
50-token role), during which its server serves nobody else. Every token of the prompt is known in
advance (models/persona.py), so the main transformer can take many prompt positions in one pass: its
streaming attention (`RingKVCache.complete`) accepts T > 1 positions per row and keeps a position per
row. `Prefill` runs the prompt through the main transformer in chunks, on the slot's row only (every
per-slot state tensor narrowed to that row, `ActiveRows.narrowed(1, start=slot)`), leaving the other
slots' states untouched, so the engine can interleave chunks with the real-time ticks of everyone else.

After the last chunk the slot is where stepping the whole prompt would have left it: the KV cache holds
the P prompt positions, and from the last position's output the text token and the model's codebook 0 of
the next column are sampled (with the slot's own sampling settings), the delayed codebooks of the last
prompt frame are written into LMGen's token cache, and LMGen's offset for the slot is P. The next real
frame is then an ordinary step (models/persona_gen.py explains the column layout).

`PrefixCache` keeps, per prompt (hash of voice and text), the slot's state after the prompt but before
that sampling: the first P positions of each layer's KV cache and the last position's outputs. A second
conversation with the same persona copies it in and only samples: no transformer pass at all. Entries are
evicted least recently used past a byte budget.
"""

from __future__ import annotations

import collections
import time
import typing as tp
from dataclasses import dataclass

import torch
from moshi.modules.transformer import RingKVCache

from .active_rows import ActiveRows
from .persona import PersonaPrompt

if tp.TYPE_CHECKING:
    from .persona_gen import PersonaLMGen
    from .sampling import BatchedLMGen

MIN_CHUNK = 16      # prompt positions per pass at least (fewer rows round differently on these CPUs)
MAX_CHUNK = 256


@dataclass
class PrefixSnapshot:
    """One slot's transformer state after a prompt of `frames` positions, and the last position's outputs."""
    frames: int
    tensors: list[torch.Tensor]        # one per RowStates field, that slot's row (KV caches: first `frames` positions)
    transformer_out: torch.Tensor      # [1, 1, dim]
    text_logits: torch.Tensor          # [1, 1, 1, text_card]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in [*self.tensors, self.transformer_out, self.text_logits])


class PrefixCache:
    """Prefilled prompts by key, least recently used evicted past `max_bytes` (0: no cache)."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._entries: collections.OrderedDict[str, PrefixSnapshot] = collections.OrderedDict()
        self.bytes = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> PrefixSnapshot | None:
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry

    def would_keep(self, nbytes: int) -> bool:
        """Whether an entry of `nbytes` can be kept at all (asked before the snapshot is copied out)."""
        return 0 < nbytes <= self.max_bytes

    def put(self, key: str, entry: PrefixSnapshot) -> None:
        if entry.nbytes > self.max_bytes or key in self._entries:
            return
        self._entries[key] = entry
        self.bytes += entry.nbytes
        while self.bytes > self.max_bytes:
            _, old = self._entries.popitem(last=False)
            self.bytes -= old.nbytes


class RowStates:
    """The per-slot state tensors of the main transformer (KV caches, offsets, exec masks), plus LMGen's
    per-slot sampling buffers: narrowed to one slot for a prefill, copied out and in for the cache."""

    def __init__(self, lm: torch.nn.Module, gen: PersonaLMGen, batch_size: int):
        extra = [(gen, name) for name in ("slot_temp_audio", "slot_temp_text", "noise", "slot_top_k_audio",
                                          "slot_top_k_text", "force_silence")]
        self.rows = ActiveRows([lm.transformer], batch_size, extra=extra)   # type: ignore[list-item]
        self.transformer_fields = self.rows.fields[len(extra):]
        self.states = self.rows.states

    def snapshot(self, slot: int, frames: int) -> list[torch.Tensor]:
        return [self._row(holder, name, dim, slot, frames).clone() for holder, name, dim in self.transformer_fields]

    def nbytes(self, slot: int, frames: int) -> int:
        """What `snapshot` would copy, without copying it."""
        return sum(self._row(holder, name, dim, slot, frames).nbytes for holder, name, dim in self.transformer_fields)

    def restore(self, slot: int, frames: int, tensors: list[torch.Tensor]) -> None:
        for (holder, name, dim), saved in zip(self.transformer_fields, tensors, strict=True):
            self._row(holder, name, dim, slot, frames).copy_(saved)

    @staticmethod
    def _row(holder: object, name: str, dim: int, slot: int, frames: int) -> torch.Tensor:
        tensor = getattr(holder, name).narrow(dim, slot, 1)
        if isinstance(holder, RingKVCache) and name == "cache":   # [2, B, H, capacity, D]: the prompt's positions
            tensor = tensor.narrow(3, 0, frames)
        return tensor


class PrefillHost(tp.Protocol):
    """What a prefill needs of the batched model (MoshiBatch)."""

    lm: tp.Any
    gen: BatchedLMGen
    prefix_cache: PrefixCache
    seconds_per_position: float

    def reset_slot(self, slot: int) -> None: ...
    def draw_noise(self, slot: int) -> None: ...


class Prefill:
    """Fills one slot with a persona prompt, a chunk per `run` call (model thread only)."""

    def __init__(self, host: PrefillHost, rows: RowStates, slot: int, prompt: PersonaPrompt, use_cache: bool = True):
        self.host = host
        self.rows = rows
        self.slot = slot
        self.prompt = prompt
        self.use_cache = use_cache
        self.position = 0           # prompt positions done
        self.started = False
        self.done = False
        self.cached = False         # started from the prefix cache
        self.passes = 0
        self._columns: torch.Tensor | None = None
        self._last: tuple[torch.Tensor, torch.Tensor] | None = None

    def run(self, budget_s: float) -> bool:
        """Does about `budget_s` of work (at least one chunk); True once the slot is ready."""
        host = self.host
        if not self.started:
            self.started = True
            host.reset_slot(self.slot)
            entry = host.prefix_cache.get(self.prompt.key) if self.use_cache else None
            if entry is not None:
                self.rows.restore(self.slot, entry.frames, entry.tensors)
                self.cached = True
                self._finish(entry.transformer_out, entry.text_logits)
                return True
            self._columns = prompt_columns(self.prompt, host.lm)
        assert self._columns is not None
        total = self.prompt.frames
        chunk = int(budget_s / max(host.seconds_per_position, 1e-6)) // MIN_CHUNK * MIN_CHUNK   # few shapes (CUDA)
        chunk = max(MIN_CHUNK, min(MAX_CHUNK, chunk, total - self.position))
        if total - self.position - chunk < MIN_CHUNK:      # no small last pass
            chunk = total - self.position
        started = time.perf_counter()
        out, logits = self._forward(self.position, self.position + chunk)
        elapsed = time.perf_counter() - started
        host.seconds_per_position += 0.3 * (elapsed / chunk - host.seconds_per_position)
        self.position += chunk
        self.passes += 1
        if self.position < total:
            return False
        last_out, last_logits = out[:, -1:].clone(), logits[:, :, -1:].clone()
        if self.use_cache and host.prefix_cache.would_keep(self.rows.nbytes(self.slot, total)):   # else no copy
            host.prefix_cache.put(self.prompt.key, PrefixSnapshot(
                total, self.rows.snapshot(self.slot, total), last_out, last_logits))
        self._finish(last_out, last_logits)
        return True

    def _forward(self, start: int, end: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The main transformer over prompt positions [start, end) of this slot only:
        [1, T, dim], [1, 1, T, text_card]."""
        lm = self.host.lm
        assert self._columns is not None
        columns = self._columns[:, :, start:end]
        given = self.prompt.embeddings
        with self.rows.rows.narrowed(1, start=self.slot):
            for state in self.rows.states:
                state.exec_mask[:] = True      # type: ignore[attr-defined]
            if given is None or start >= given.shape[0]:
                return lm.forward_text(columns)
            cut = min(end, given.shape[0])
            parts = [given[start:cut][None].to(device=lm.device, dtype=lm.dtype)]
            if end > cut:
                parts.append(embed_columns(lm, self._columns[:, :, cut:end]))
            return forward_embedded(lm, torch.cat(parts, dim=1))

    def _finish(self, transformer_out: torch.Tensor, text_logits: torch.Tensor) -> None:
        """Samples the next column's text and codebook 0 from the prompt's last position, as the last
        forced step would, and leaves LMGen's state for the slot at offset P."""
        host, gen, slot = self.host, self.host.gen, self.slot
        prompt = self.prompt
        total = prompt.frames
        host.draw_noise(slot)
        # The prompt's next column is the persona's own: never forced silent, whatever the slot's last tick
        # left in the per-slot flag (an interrupt, then a reset within its hold).
        gen.force_silence[slot] = False
        logits = text_logits.clone()
        with self.rows.rows.narrowed(1, start=slot):
            gen._sample_text(logits)
            text = logits.argmax(dim=-1)[:, 0, 0]                     # [1]
            audio = gen.depformer_step(text, transformer_out)          # [1, dep_q]
        state = gen._streaming_state
        assert state is not None
        cache = state.cache                                            # [B, K, CT]
        column = total % cache.shape[2]
        last = prompt.frame(total - 1).to(cache.device)                # [1 + 16]
        delays = gen.delays_cuda
        cache[slot, :, column] = torch.where(delays > 0, last, cache[slot, :, column])
        cache[slot, 0, column] = text[0]
        cache[slot, 1, column] = audio[0, 0]
        state.offsets[slot] = total
        state.exec_mask[slot] = True
        self.done = True


def embed_columns(lm: tp.Any, columns: torch.Tensor) -> torch.Tensor:
    """[1, K, T] tokens -> [1, T, dim]: the transformer's input, summed in `LMModel.forward_text`'s order."""
    total = None
    for k in range(lm.num_audio_codebooks):
        emb = lm.emb[k](columns[:, k + lm.audio_offset])
        total = emb if total is None else total + emb
    text = lm.text_emb(columns[:, 0])
    return text if total is None else total + text


def forward_embedded(lm: tp.Any, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`LMModel.forward_text` after its embedding: [1, T, dim] -> ([1, T, dim], [1, 1, T, text_card])."""
    out = lm.transformer(inputs)
    if lm.out_norm:
        out = lm.out_norm(out)
    return out, lm.text_linear(out)[:, None]


def prompt_columns(prompt: PersonaPrompt, lm: tp.Any) -> torch.Tensor:
    """The main transformer's inputs for the prompt: [1, K, P], column j holding stream k's token of frame
    j - delay_k, or the initial token where j <= delay_k (as LMGen's first steps read them)."""
    frames = torch.stack([prompt.frame(p) for p in range(prompt.frames)], dim=1)   # [K, P]
    initial = lm._get_initial_token()[0, :, 0].cpu()                               # [K]
    columns = torch.empty_like(frames)
    for k, delay in enumerate(lm.delays):
        columns[k, delay:] = frames[k, : prompt.frames - delay]
        columns[k, : delay + 1] = initial[k]
    return columns[None].to(lm.device)
