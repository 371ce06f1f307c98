"""Run a batched streaming step on the first `rows` rows of its batch only (CPU).

moshi's streaming modules keep their state for a fixed batch of B slots, and a step computes all B rows
even when `set_exec_mask` masks most of them out: on a CPU a step of 48 slots costs ~5x a step of 1,
whether 1 or 48 conversations are active. Slots are taken lowest index first, so the active ones sit in
a prefix of the batch; `ActiveRows.narrowed(rows)` swaps every per-slot tensor of every streaming state
for a view of its first `rows` rows for the duration of one step, then writes back the tensors a module
replaced instead of updating in place. The step then costs what its active rows cost.

Which dimension of a state tensor is the batch is not hard-coded (the KV cache keeps it second): it is
found once, by comparing each live state with a fresh one built for B + 1 slots (LMGen's own state,
whose constructor has side effects, is read by its known layout: batch first). Rows are numbered as
before, so a slot's state never moves; a row's numbers do not depend on the other rows (the scheduler's
bit-identity test checks it, with the prefix changing under a running conversation).

A guided model (models/guidance.py) keeps two rows per slot in the LM's states (slot s: rows 2s, 2s + 1):
those fields narrow to rows [2 start, 2 (start + rows)), found the same way with a fresh state of 2 (B + 1).

Not used on CUDA: moshi's CUDA graphs are captured for the full batch, and a GPU step costs about the
same for 1 row as for 64.
"""

from __future__ import annotations

import contextlib
import dataclasses
import typing as tp

import torch
from moshi.models.lm import LMGen

# Narrowed steps of Moshi (moshi_batch.py) and of the TTS's Mimi decoder (tts_rows.py) compute a multiple of this
# many leading slots (CPU): on this project's CPUs batches of 8 rows or fewer round differently from larger ones
# (and Mimi's decoder a row of 4 or 9 rows differently from one of 16), which would break a row's bit-identity as
# the prefix changes.
ROW_BUCKET = 16

# (holder, attribute, batch dimension): a per-slot tensor to narrow
_Field = tuple[object, str, int]


class ActiveRows:
    def __init__(self, roots: tp.Sequence[torch.nn.Module], batch_size: int,
                 extra: tp.Sequence[tuple[object, str]] = ()):
        """`roots`: modules in streaming mode for `batch_size`; `extra`: (object, attribute) pairs of
        per-slot tensors outside the streaming states (batch first), e.g. per-slot sampling buffers."""
        self.batch_size = batch_size
        self.states: list[object] = []
        seen: set[int] = set()   # by identity: states are dataclasses whose == compares tensors
        self.fields: list[_Field] = [(holder, name, 0) for holder, name in extra]
        self.factors: list[int] = [1] * len(self.fields)   # rows per slot of each field (2: a guided model's LM)
        self.state_factors: list[int] = []
        for root in roots:
            for module in root.modules():
                state = getattr(module, "_streaming_state", None)
                if state is None or id(state) in seen:
                    continue
                seen.add(id(state))
                self.states.append(state)
                factor = 2 if state.batch_size == 2 * batch_size and batch_size > 0 else 1
                self.state_factors.append(factor)
                if isinstance(module, LMGen):
                    # its state's constructor enters the LM's streaming mode: read its layout instead
                    # (cache [B, K, T], offsets [B], exec_mask [B], guided conditions [2B, ...] when present)
                    for name in _attribute_names(state):
                        value = getattr(state, name)
                        if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] in (batch_size, 2 * batch_size):
                            self.fields.append((state, name, 0))
                            self.factors.append(value.shape[0] // batch_size)
                else:
                    fresh = module._init_streaming_state(factor * (batch_size + 1))  # type: ignore[operator]
                    found = _batch_fields(state, fresh, factor * batch_size, factor)
                    self.fields += found
                    self.factors += [factor] * len(found)

    @contextlib.contextmanager
    def narrowed(self, rows: int, start: int = 0) -> tp.Iterator[None]:
        """Within: every per-slot tensor is a view of rows [start, start + rows) (in-place updates land in
        the full tensor); after: tensors the step replaced are copied back into those rows. (A persona
        prefill narrows to its one slot: models/prefill.py.)"""
        if rows >= self.batch_size:
            yield
            return
        full = [getattr(holder, name) for holder, name, _ in self.fields]
        views = [tensor.narrow(dim, k * start, k * rows)
                 for tensor, (_, _, dim), k in zip(full, self.fields, self.factors, strict=True)]
        for (holder, name, _), view in zip(self.fields, views, strict=True):
            setattr(holder, name, view)
        for state, k in zip(self.states, self.state_factors, strict=True):
            state.batch_size = k * rows  # type: ignore[attr-defined]
        try:
            yield
        finally:
            for (holder, name, dim), k, tensor, view in zip(self.fields, self.factors, full, views, strict=True):
                now = getattr(holder, name)
                if now is not view:  # the module assigned a new tensor (e.g. `state.offsets = where(...)`)
                    tensor.narrow(dim, k * start, k * rows).copy_(now)
                setattr(holder, name, tensor)
            for state, k in zip(self.states, self.state_factors, strict=True):
                state.batch_size = k * self.batch_size  # type: ignore[attr-defined]


def _batch_fields(state: object, fresh: object, batch_size: int, step: int = 1) -> list[_Field]:
    """The per-slot tensors of one state: those whose shape differs from the B + `step` state's in exactly
    the dimension that holds B. Looks one level into non-tensor fields (the KV cache object)."""
    found: list[_Field] = []
    for name in _attribute_names(state):
        live, other = getattr(state, name), getattr(fresh, name, None)
        if isinstance(live, torch.Tensor) and isinstance(other, torch.Tensor):
            dim = _batch_dim(live, other, batch_size, step)
            if dim is not None:
                found.append((state, name, dim))
        elif live is not None and type(live) is type(other) and hasattr(live, "__dict__") and not callable(live):
            for inner in vars(live):
                a, b = getattr(live, inner), getattr(other, inner)
                if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
                    dim = _batch_dim(a, b, batch_size, step)
                    if dim is not None:
                        found.append((live, inner, dim))
    return found


def _attribute_names(state: object) -> list[str]:
    names = [f.name for f in dataclasses.fields(state)] if dataclasses.is_dataclass(state) else []
    return names + [name for name in vars(state) if name not in names]   # exec_mask is set in __post_init__


def _batch_dim(live: torch.Tensor, fresh: torch.Tensor, batch_size: int, step: int = 1) -> int | None:
    if live.dim() != fresh.dim():
        return None
    differing = [d for d in range(live.dim()) if live.shape[d] != fresh.shape[d]]
    if len(differing) == 1 and live.shape[differing[0]] == batch_size and fresh.shape[differing[0]] == batch_size + step:
        return differing[0]
    return None
