"""LMGen for a PersonaPlex-style model: its depformer also predicts the user's stream (dep_q 16).

moshi 0.2.13's `LMGen` writes the user's codebooks into its token cache only for the streams the
depformer does not predict (`num_codebooks - dep_q - 1` of them): with PersonaPlex's dep_q = 16 that is
none, so the model would hear its own guesses of the user instead of the user. `PersonaLMGen` keeps
moshi's step and adds, around it, what PersonaPlex's fork of LMGen does with its "provided" tokens:

- the user's codebooks are written into their cache rows (at offset + delay, as moshi does for Moshi),
  and whatever the step predicts there is thrown away: those rows only ever hold what the user sent;
- a slot may be *forced* for a step: its text token and its own audio codebooks are given (a persona
  prompt frame: voice-prompt codes or silence, and a text-prompt token), written at the same positions,
  read as the step's input, and kept against the step's predictions.

Token layout, one column per step (the same as PersonaPlex's): column j holds the text token and the
codebook 0 of frame j + 1 and the delayed codebooks 1..7 of frame j, for both speakers; the step at
offset o reads column o and predicts column o + 1. After a forced prompt of P frames the next step reads
column P: the text and codebook 0 predicted from the last prompt frame, its forced delayed codebooks,
and the first user frame. PersonaPlex steps one call behind (its first call only fills the cache), so
it gives the same tokens, one frame later.
"""

from __future__ import annotations

import torch
from moshi.models.lm import LMModel, scatter_with_mask_

from .sampling import BatchedLMGen


class PersonaLMGen(BatchedLMGen):
    """BatchedLMGen for dep_q == n_q models: the user's stream is given, and slots can be forced."""

    def __init__(self, lm_model: LMModel, batch_size: int, silence_codes: torch.Tensor):
        super().__init__(lm_model, batch_size, silence_codes, agent_q=lm_model.n_q // 2)
        assert lm_model.dep_q > self.agent_q, "PersonaLMGen is for depformers that predict the user's stream"
        device = lm_model.device
        self.forced = torch.zeros(batch_size, dtype=torch.bool, device=device)              # [B]
        self.forced_tokens = torch.zeros(batch_size, 1 + self.agent_q, dtype=torch.long, device=device)  # [B, 1 + 8]

    @property
    def user_rows(self) -> slice:
        """The cache rows of the user's codebooks: after text and the model's own codebooks."""
        return slice(1 + self.agent_q, 1 + 2 * self.agent_q)

    def _step(self, input_tokens: torch.Tensor, depformer_replace_tokens: torch.Tensor | None = None):
        """input_tokens [B, agent_q, 1]: the user's codes this frame."""
        state = self._streaming_state
        assert state is not None
        cache = state.cache                                                   # [B, 1 + 16, CT]
        ct = cache.shape[2]
        offsets = state.offsets                                               # [B], before the step
        running = state.exec_mask[:, None, None]
        user = self.user_rows
        positions = (offsets[:, None, None] + self.delays_cuda[user][:, None]) % ct      # [B, 8, 1]
        scatter_with_mask_(cache[:, user], -1, positions, input_tokens[:, : self.agent_q], running)
        self._write_forced(offsets)
        kept_user = cache[:, user].clone()
        out = super()._step(input_tokens, depformer_replace_tokens)
        cache[:, user] = kept_user            # the step's guesses of the user are dropped
        self._write_forced(offsets)           # and so are its guesses over forced delayed codebooks
        return out

    def _write_forced(self, offsets: torch.Tensor) -> None:
        """Writes the forced slots' text and own codebooks at offset + delay (no-op for other slots)."""
        state = self._streaming_state
        assert state is not None
        cache = state.cache
        own = slice(0, 1 + self.agent_q)
        positions = (offsets[:, None, None] + self.delays_cuda[own][:, None]) % cache.shape[2]  # [B, 9, 1]
        mask = (self.forced & state.exec_mask)[:, None, None]
        scatter_with_mask_(cache[:, own], -1, positions, self.forced_tokens[:, :, None], mask)
