"""Continuous batching for an in-process causal LM: every turn's next token in one forward pass.

`DecodeBatch` holds the rows (turns) being decoded and one batched KV cache for them, a
transformers `DynamicCache` whose layers are `[B, kv_heads, L, head_dim]`, with a `[B, L]` mask of
which columns are real for each row. A turn joins at the next step: its prompt is prefilled alone
(batch 1, so a failing prompt fails only its turn), then its cache is left-padded to the batch's
length (or the batch to its length) and concatenated as a new row. Each step then decodes one token
for every row in one forward pass, with per-row position ids and the padding masked out. A row whose
turn ended, failed or was cancelled is dropped at the next step (`index_select` of the other rows;
columns that are padding for every remaining row are cut from the left), which frees its cache.

A row whose reader is `MAX_AHEAD` deltas behind sits a step out: it gets a masked column (a "hole",
like padding) instead of a token, so the batch stays aligned without copying caches around.

Everything here runs on the model's one thread; nothing here touches asyncio.
"""

from __future__ import annotations

import logging
import typing as tp
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from transformers import DynamicCache

log = logging.getLogger(__name__)

MAX_AHEAD = 2  # deltas a turn may hold before its reader takes them; past that it sits steps out


@dataclass(eq=False)
class TurnRequest:
    """One assistant turn as the model thread sees it. `emit` hands a delta (str), an exception or the
    end marker to the turn's reader; `should_stop` is true once the reader is gone or cancelled."""

    ids: list[int]
    temperature: float
    max_tokens: int
    generator: torch.Generator | None
    should_stop: Callable[[], bool]
    emit: Callable[[object], None]
    room: Callable[[], bool]            # false while the reader holds MAX_AHEAD undelivered deltas
    top_k: int | None = None            # sample among the k likeliest tokens (None: all)
    decoder: Any = None                 # an _IncrementalDecoder (set by the backend)
    generated: int = 0                  # tokens sampled for this turn, its end-of-turn token included


@dataclass(eq=False)
class Row:
    turn: TurnRequest
    position: int                       # real tokens in this row's cache (its next position id)
    next_token: int = 0                 # the last sampled token, fed at the next step
    generated: int = 0
    finished: bool = False
    failure: BaseException | None = field(default=None)


class DecodeBatch:
    """The rows being decoded and their one batched cache (model thread only)."""

    def __init__(self, model: Any, eos_ids: set[int], pad_id: int = 0):
        self.model = model
        self.eos_ids = eos_ids
        self.pad_id = pad_id
        self.rows: list[Row] = []
        self.cache: DynamicCache | None = None
        self.mask = torch.zeros(0, 0, dtype=torch.bool)   # [B, L]: True where a column is real for the row
        self.tokens_generated = 0
        self.steps = 0                    # batched decode steps run
        self.max_rows = 0                 # the most rows decoded in one step, ever
        self.batch_sizes: dict[int, int] = {}   # rows decoded in a step -> how many steps had that many

    @property
    def columns(self) -> int:
        return int(self.mask.shape[1]) if self.rows else 0

    # --- joining, leaving -----------------------------------------------------------------------

    @torch.inference_mode()
    def admit(self, turn: TurnRequest) -> None:
        """Prefills `turn` alone and adds it as a row; its first token is sampled and emitted. A failure
        here (the model, the sampling) ends this turn only."""
        if turn.should_stop():
            turn.emit(_DONE)
            return
        device = self.model.device
        cache = DynamicCache()
        try:
            # logits_to_keep=1: only the last position's logits; a long prompt times a 150k-token
            # vocabulary would otherwise cost gigabytes at prefill.
            out = self.model(input_ids=torch.tensor([turn.ids], device=device), past_key_values=cache,
                             use_cache=True, logits_to_keep=1)
            row = Row(turn, position=len(turn.ids))
            delta = self._take(row, out.logits[0, -1])
        except Exception as exc:  # noqa: BLE001 - this turn's failure, reported to its reader only
            log.exception("LLM prefill failed")
            turn.emit(exc)
            turn.emit(_DONE)
            return
        if not row.finished:   # in the batch before its reader sees its first delta
            self._merge(row, cache, torch.ones(1, len(turn.ids), dtype=torch.bool, device=device))
        if delta:
            turn.emit(delta)
        if row.finished:
            self._finish(row)

    def _merge(self, row: Row, cache: DynamicCache, mask: torch.Tensor) -> None:
        """Concatenates a one-row cache to the batch, left-padding the shorter of the two."""
        if not self.rows:
            self.rows, self.cache, self.mask = [row], cache, mask
            return
        assert self.cache is not None
        length = max(self.columns, mask.shape[1])
        for mine, theirs in zip(_layers(self.cache), _layers(cache)):
            mine.keys = torch.cat([_left_pad(mine.keys, length), _left_pad(theirs.keys, length)])
            mine.values = torch.cat([_left_pad(mine.values, length), _left_pad(theirs.values, length)])
        self.mask = torch.cat([_left_pad(self.mask, length, dim=1), _left_pad(mask, length, dim=1)])
        self.rows.append(row)

    def drop_done(self) -> int:
        """Drops the rows that finished, failed or were cancelled (their reader told the end) and frees
        their cache rows; returns how many left."""
        leaving = [r for r in self.rows if r.finished or r.turn.should_stop()]
        if not leaving:
            return 0
        keep = [i for i, r in enumerate(self.rows) if r not in leaving]
        self._keep(keep)
        for row in leaving:    # told once the batch no longer holds them
            self._finish(row)
        return len(leaving)

    def _keep(self, keep: list[int]) -> None:
        self.rows = [self.rows[i] for i in keep]
        if not self.rows:
            self.cache, self.mask = None, torch.zeros(0, 0, dtype=torch.bool)
            return
        index = torch.tensor(keep, device=self.mask.device)
        mask = self.mask.index_select(0, index)
        start = int(mask.any(dim=0).nonzero()[0])   # columns that are padding for every row left
        self.mask = mask[:, start:]
        assert self.cache is not None
        for layer in _layers(self.cache):
            layer.keys = layer.keys.index_select(0, index)[:, :, start:]
            layer.values = layer.values.index_select(0, index)[:, :, start:]

    def _finish(self, row: Row) -> None:
        row.finished = True
        if row.failure is not None:
            row.turn.emit(row.failure)
        elif not row.turn.should_stop():
            tail = row.turn.decoder.flush()
            if tail:
                row.turn.emit(tail)
        row.turn.emit(_DONE)

    # --- one step ---------------------------------------------------------------------------------

    def ready(self) -> list[int]:
        """The rows that can take a token this step (their reader has room)."""
        return [i for i, r in enumerate(self.rows) if not r.finished and r.turn.room()]

    @torch.inference_mode()
    def step(self) -> int:
        """One forward pass for every ready row; returns how many rows it decoded (0: none ready)."""
        active = self.ready()
        if not active:
            return 0
        assert self.cache is not None
        length = self.columns
        try:
            logits = self._forward(self.rows, active, self.cache, self.mask)
        except Exception:  # noqa: BLE001 - find the row(s) at fault, keep the others going
            log.exception("LLM batched step failed; retrying its rows one by one")
            for layer in _layers(self.cache):   # undo whatever layers the failed pass appended
                layer.crop(length)
            self._step_rows_alone(active)
            return len(active)
        self._record(len(active))
        for i in active:
            self._take_safely(self.rows[i], logits[i])
        return len(active)

    def _forward(self, rows: list[Row], active: list[int], cache: DynamicCache, mask: torch.Tensor) -> torch.Tensor:
        """Feeds each active row its last token (others a masked hole); returns logits [B, V] and
        leaves `mask` extended by the new column in `self.mask` when `mask` is the batch's."""
        device = mask.device
        is_active = torch.zeros(len(rows), dtype=torch.bool, device=device)
        is_active[active] = True
        tokens = torch.tensor([[r.next_token if is_active[i] else self.pad_id] for i, r in enumerate(rows)],
                              device=device)                                  # [B, 1]
        positions = torch.tensor([[r.position] for r in rows], device=device)  # [B, 1]
        new_mask = torch.cat([mask, is_active[:, None]], dim=1)               # [B, L+1]
        out = self.model(input_ids=tokens, attention_mask=new_mask.long(), position_ids=positions,
                         past_key_values=cache, use_cache=True,
                         cache_position=torch.tensor([mask.shape[1]], device=device), logits_to_keep=1)
        if mask is self.mask:
            self.mask = new_mask
        for i in active:
            rows[i].position += 1
        return out.logits[:, -1]

    def _step_rows_alone(self, active: list[int]) -> None:
        """After a failed batched pass: each row steps alone; the ones that fail end with the error."""
        assert self.cache is not None
        caches, masks = [], []
        for i, row in enumerate(self.rows):
            cache = _select(self.cache, i)
            mask = self.mask[i:i + 1]
            if i in active:
                try:
                    logits = self._forward([row], [0], cache, mask)
                    delta = self._take(row, logits[0])
                    if delta:
                        row.turn.emit(delta)
                except Exception as exc:  # noqa: BLE001 - this row's failure only
                    log.exception("LLM step failed for one turn")
                    row.failure, row.finished = exc, True
                    for layer in _layers(cache):
                        layer.crop(mask.shape[1])
                    caches.append(_pad_right(cache))
                    masks.append(torch.cat([mask, torch.zeros(1, 1, dtype=torch.bool, device=mask.device)], 1))
                    continue
                masks.append(torch.cat([mask, torch.ones(1, 1, dtype=torch.bool, device=mask.device)], 1))
            else:
                cache = _pad_right(cache)
                masks.append(torch.cat([mask, torch.zeros(1, 1, dtype=torch.bool, device=mask.device)], 1))
            caches.append(cache)
        for layer, *parts in zip(_layers(self.cache), *(_layers(c) for c in caches)):
            layer.keys = torch.cat([p.keys for p in parts])
            layer.values = torch.cat([p.values for p in parts])
        self.mask = torch.cat(masks)

    def _record(self, rows: int) -> None:
        self.steps += 1
        self.max_rows = max(self.max_rows, rows)
        self.batch_sizes[rows] = self.batch_sizes.get(rows, 0) + 1

    def _take_safely(self, row: Row, logits: torch.Tensor) -> None:
        try:
            delta = self._take(row, logits)
        except Exception as exc:  # noqa: BLE001 - e.g. sampling from NaN probabilities: this turn only
            log.exception("LLM sampling failed for one turn")
            row.failure, row.finished = exc, True
            return
        if delta:
            row.turn.emit(delta)

    def _take(self, row: Row, logits: torch.Tensor) -> str:
        """Samples the row's next token from its logits [V]; returns its text (the caller emits it once
        the batch is in order); ends the row at EOS or max_tokens."""
        token = sample(logits.float(), row.turn.temperature, row.turn.generator, row.turn.top_k)
        self.tokens_generated += 1
        row.generated += 1
        row.turn.generated = row.generated   # read by the turn's reader once it has the end marker
        row.next_token = token
        if token in self.eos_ids:
            row.finished = True
            return ""
        if row.generated >= row.turn.max_tokens:
            row.finished = True
        return tp.cast(str, row.turn.decoder.push(token))


_DONE = object()


def sample(logits: torch.Tensor, temperature: float, generator: torch.Generator | None,
           top_k: int | None = None) -> int:
    """Greedy at temperature <= 0, else a draw from softmax(logits / temperature), over the `top_k` likeliest
    tokens only when given (logits [V])."""
    if temperature <= 0:
        return int(torch.argmax(logits))
    if top_k is not None and top_k < logits.shape[-1]:
        kept, ids = torch.topk(logits, top_k)   # [k] each, likeliest first: top_k=1 is the argmax
        probs = torch.softmax(kept / temperature, dim=-1)
        return int(ids[torch.multinomial(probs, 1, generator=generator)])
    probs = torch.softmax(logits / temperature, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


def _layers(cache: DynamicCache) -> list[Any]:
    return tp.cast(list[Any], cache.layers)


def _left_pad(t: torch.Tensor, length: int, dim: int = 2) -> torch.Tensor:
    """Zeros (False for a mask) before `t`'s columns along `dim`, up to `length`."""
    missing = length - t.shape[dim]
    if missing == 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t.new_zeros(shape), t], dim=dim)


def _select(cache: DynamicCache, i: int) -> DynamicCache:
    """A one-row copy of row `i` of a batched cache."""
    single = DynamicCache()
    for layer_index, layer in enumerate(_layers(cache)):
        single.update(layer.keys[i:i + 1].clone(), layer.values[i:i + 1].clone(), layer_index)
    return single


def _pad_right(cache: DynamicCache) -> DynamicCache:
    """One more (masked) column: what a row that sat a step out has after the step."""
    for layer in _layers(cache):
        layer.keys = torch.cat([layer.keys, layer.keys.new_zeros(layer.keys[:, :, :1].shape)], dim=2)
        layer.values = torch.cat([layer.values, layer.values.new_zeros(layer.values[:, :, :1].shape)], dim=2)
    return cache
