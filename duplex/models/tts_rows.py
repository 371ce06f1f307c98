"""What one batched TTS step computes: the rows of the turns that step, and the codebooks they need.

A TTS step is cheap on its own, but the model computes every slot's row (`set_exec_mask` only keeps
the others' state) and the depformer samples every codebook, one after another. Two things make a
step cost what its turns need, and neither changes a number of any turn (tests/test_tts_fast_start.py):

- **Rows.** The LM's step narrows every per-slot tensor to the range of rows between the lowest and
  highest slot that steps (`ActiveRows.narrowed(rows, start)`), e.g. four rows for a turn starting alone
  while others wait. On these CPUs a linear layer rounds a row differently in a batch of 1 to 3 rows
  than in 4 or more, so the range is at least `MIN_ROWS` rows. The voices' cross-attention keys and
  values are per-slot tensors that moshi fills lazily: they are computed once here, so that they can be
  narrowed too. Mimi's decoder rounds differently below 16 rows, so its steps compute the leading
  slots in multiples of `ROW_BUCKET` (as Moshi's do, moshi_batch.py): all of them up to 16 slots.
- **Codebooks.** Before a turn's audio starts (the text-to-audio delay plus each codebook's acoustic
  delay), its codes are forced to "zero" (`TtsEngineModel._on_audio`). The depformer samples codebook
  q from codebooks < q only, and each codebook draws its own pre-drawn noise, so the codebooks that no
  stepping turn has started yet can be left unsampled: `sampled_codebooks` says how many leading ones a
  step needs (none during the text-to-audio delay, as moshi's `TTSModel.generate` skips the depformer).

Not used on CUDA (CUDA graphs are captured for the full batch).
"""

from __future__ import annotations

import contextlib
import typing as tp

import torch
from moshi.modules.transformer import StreamingMultiheadAttention

from .active_rows import ROW_BUCKET, ActiveRows
from .sampling import BatchedLMGen

MIN_ROWS = 4   # batches of 1-3 rows round differently from larger ones on these CPUs (one kernel per size class)
_PER_SLOT_BUFFERS = ("slot_temp_audio", "slot_temp_text", "noise", "slot_top_k_audio", "slot_top_k_text",
                     "force_silence")


class TtsRows:
    """Narrows a batched TTS step (LMGen + Mimi, both in streaming mode for `slots`) to the rows it needs."""

    def __init__(self, gen: BatchedLMGen, mimi: torch.nn.Module, slots: int, audio_start: list[int], *,
                 enabled: bool):
        """`audio_start[q]`: the first step at which codebook q carries real audio."""
        self.slots = slots
        self.enabled = enabled
        self.gen = gen
        self.audio_start = audio_start
        # Sampling a prefix of the codebooks needs the codebooks to start in order (delays non-decreasing).
        self._prefix_ok = enabled and audio_start == sorted(audio_start)
        self.active: ActiveRows | None = None
        self.codec: ActiveRows | None = None
        if enabled:
            extra: list[tuple[object, str]] = [(gen, name) for name in _PER_SLOT_BUFFERS]
            extra += _cross_attention_fields(gen)
            self.active = ActiveRows([gen], slots, extra=extra)
            self.codec = ActiveRows([mimi], slots) if slots > ROW_BUCKET else None

    def span(self, slots: tp.Sequence[int]) -> tuple[int, int]:
        """(start, rows): the rows a step of these slots computes (all of them when narrowing is off)."""
        if self.active is None:
            return 0, self.slots
        low, high = min(slots), max(slots) + 1
        rows = max(high - low, min(MIN_ROWS, self.slots))
        start = min(low, self.slots - rows)
        return start, rows

    def narrowed(self, start: int, rows: int) -> tp.ContextManager[None]:
        if self.active is None or rows >= self.slots:
            return contextlib.nullcontext()
        return self.active.narrowed(rows, start)

    def decode_rows(self, slots: tp.Sequence[int]) -> int:
        """How many leading rows a Mimi decode of these slots computes: a multiple of ROW_BUCKET (all of
        them when narrowing is off)."""
        if self.codec is None:
            return self.slots
        return min(self.slots, -(-(max(slots) + 1) // ROW_BUCKET) * ROW_BUCKET)

    def decoding(self, rows: int) -> tp.ContextManager[None]:
        if self.codec is None or rows >= self.slots:
            return contextlib.nullcontext()
        return self.codec.narrowed(rows)

    def sampled_codebooks(self, steps: tp.Iterable[int]) -> int:
        """How many leading codebooks the depformer must sample when turns at these step counts step:
        those whose audio has started for one of them. Without trimming: none before the first codebook
        starts (as moshi's `TTSModel.generate`), then all of them."""
        most = max(steps)
        if not self._prefix_ok:
            return 0 if most < min(self.audio_start) else len(self.audio_start)
        return sum(1 for start in self.audio_start if most >= start)

    @contextlib.contextmanager
    def sampling(self, codebooks: int) -> tp.Iterator[None]:
        """Within: the depformer samples only the first `codebooks` codebooks (the others come out as 0,
        and `_on_audio` replaces them by the "zero" token, as it does for every unstarted codebook)."""
        if codebooks >= self.gen.agent_q:
            yield
            return
        full = self.gen.agent_q
        self.gen.agent_q = codebooks
        try:
            yield
        finally:
            self.gen.agent_q = full


def _cross_attention_fields(gen: BatchedLMGen) -> list[tuple[object, str]]:
    """The cross-attention layers' cached keys and values ([B, H, T, D] each), computed now from the
    stream's cross-attention source (moshi would on the first step) so that they exist to be narrowed."""
    state = gen._streaming_state
    fields: list[tuple[object, str]] = []
    if state is None or state.condition_cross is None:
        return fields
    for module in gen.lm_model.transformer.modules():
        if isinstance(module, StreamingMultiheadAttention) and module.cross_attention and module._streaming_state:
            module.update_streaming_cross_attention_src(state.condition_cross)
            fields += [(module._streaming_state, "k_cross"), (module._streaming_state, "v_cross")]
    return fields
