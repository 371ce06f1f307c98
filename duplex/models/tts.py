"""Kyutai's streaming TTS (`moshi.models.tts`) over a fixed batch of slots, fed word by word.

The TTS is a delayed-streams LM: it reads text and writes Mimi codes one 80 ms step at a time,
the audio lagging the text by `delay_steps` (1.28 s on the real model). moshi's `StateMachine`
decides, from the model's own "pad"/"new word" choices, when the next word is fed in; with a
lookahead stream it also needs to see `second_stream_ahead` words beyond the current one. So a
step that may take a word runs only while that many words are queued, or once the text is complete
(as Kyutai's own streaming script does); the steps the machine forces to a pad run at once. Speech
starts after a handful of words, long before the LLM is done.

Batching mirrors `moshi_batch.MoshiBatch`: one `LMGen` in streaming mode for `slots` turns,
`set_exec_mask` so that slots with nothing to say keep their state, per-slot randomness
(`sampling.BatchedLMGen`), per-slot reset when a slot is reused, and each slot's voice written
into its row of the cross-attention source. A step computes only the rows between its lowest and
highest slot, and only the codebooks whose audio has started (`tts_rows.py`). `produce` runs the
steps of a starting turn (`first_audio_steps` before its first frame) back to back, batched with
the turns that start with it, without dragging the speaking turns along. Everything here runs on
the model thread, except `TtsEngineModel.start_turn` and `TtsTurn.push_text`/`end_text`/`cancel`,
which only queue work.

The seam with a turn (`tts_turn.TtsTurn`, whose needs are the `TtsTurnEngine` protocol): the turn
owns its text queue; the engine owns each turn's generation state (`TurnGenState`: state machine,
step count, frames produced), which it alone writes. They meet through public calls only:
`word_entries` (a word as state-machine entries), `ready(turn)` (model thread: takes the turn's
words with `turn.take_text()`, says whether it may step), `step(turns)` (model thread: one batched
step of those turns, returning each one's new frame or None) and `release(turn)`.

Shapes: B = slots, R = the rows a step computes, Q = n_q audio codebooks (all generated: no user stream), F = 1920 samples.
"""

from __future__ import annotations

import collections
import functools
import threading
import typing as tp
import weakref
from pathlib import Path

import torch
from moshi.models import loaders
from moshi.conditioners import ConditionType
from moshi.models.tts import Entry, TTSModel, script_to_entries
from moshi.modules.transformer import StreamingMultiheadAttention

from ..audio import FRAME_SAMPLES
from .inference import inference
from .sampling import BatchedLMGen, SlotRandomness
from .tts_rows import TtsRows
from .tts_turn import TtsFrame, TtsTurn, TurnGenState
from .tts_voices import hub_voices, shown, voice_repo_of

__all__ = ["TtsCapacity", "TtsEngineModel", "TtsFrame", "TtsTurn", "TurnGenState", "UnknownVoice"]


DEFAULT_VOICE = "expresso/ex03-ex01_happy_001_channel1_334s.wav"  # Kyutai's own default in their scripts
CFG_COEF = 2.0          # the real model is CFG-distilled: this is a condition value, not a second batch
PADDING_BETWEEN = 1     # forced pads between words, as Kyutai uses: clearer articulation


class UnknownVoice(ValueError):
    """The voice name is not in the voices repo (or directory); the message says what exists."""


class TtsCapacity(RuntimeError):
    """Every slot is speaking."""


AUDIO_TOP_K = 250   # LMGen's default audio top-k, what a turn samples with unless it asks for another
TEXT_TOP_K = 25     # LMGen's default text top-k


class TtsEngineModel:
    """Loads the TTS once and speaks up to `slots` turns at a time through one batched step."""

    def __init__(self, checkpoint: loaders.CheckpointInfo, slots: int = 1, device: str = "cpu",
                 dtype: torch.dtype = torch.float32, voice: str | None = None, *,
                 voice_repo: str | None = None, n_q: int | None = None, temperature: float | None = None,
                 lean_steps: bool | None = None):
        """`lean_steps`: compute only the rows and codebooks a step needs (tts_rows.py; None: on CPU)."""
        self.slots = slots
        self.device = torch.device(device)
        lm_config = checkpoint.lm_config or {}
        self.tts = TTSModel.from_checkpoint_info(
            checkpoint, n_q=n_q or lm_config.get("n_q", 32), device=self.device, dtype=dtype,
            voice_repo=voice_repo or voice_repo_of(checkpoint))
        self._check_supported()
        self.voice_repo = self.tts.voice_repo
        self.default_voice = voice or DEFAULT_VOICE
        self.voices = self._offered_voices(self.default_voice)   # fails at start-up on a bad --voice
        lm, mimi = self.tts.lm, self.tts.mimi
        self.frame_samples = mimi.frame_size
        assert self.frame_samples == FRAME_SAMPLES, self.frame_samples
        self.machine = self.tts.machine
        self.delay_steps = self.tts.delay_steps
        lm.dep_q = self.tts.n_q  # as TTSModel.generate does: generate only the codebooks Mimi decodes
        self.gen = BatchedLMGen(lm, slots, torch.zeros(lm.dep_q, dtype=torch.long))
        self.gen.on_text_hook = self._on_text
        self.gen.on_audio_hook = self._on_audio
        temp = temperature if temperature is not None else checkpoint.lm_gen_config.get("temp", self.tts.temp)
        self.gen.slot_temp_audio.fill_(temp)
        self.gen.slot_temp_text.fill_(temp)
        self.gen.slot_top_k_audio.fill_(AUDIO_TOP_K)   # LMGen's defaults, as TTSModel uses them
        self.gen.slot_top_k_text.fill_(TEXT_TOP_K)
        self.randomness = SlotRandomness(slots, 1 + lm.dep_q)
        self._voice_rows: dict[str, torch.Tensor] = {}
        self.gen.condition_tensors = self._conditions([self._attributes(self.default_voice)] * slots)
        self.gen.streaming_forever(slots)
        mimi.streaming_forever(slots)
        self._slot_voice = [self.default_voice] * slots
        self._turns: list[weakref.ref | None] = [None] * slots
        self._lock = threading.Lock()        # guards the slot table: start_turn runs off the model thread
        self._released: collections.deque[int] = collections.deque()
        self._running: dict[int, TurnGenState] = {}   # slot -> the state of the turn stepping there (hooks)
        audio_delays = torch.tensor(lm.delays[1: 1 + lm.dep_q], device=self.device)
        self._audio_start = audio_delays + self.delay_steps          # [Q]: first step with real codes
        self._steps = torch.zeros(slots, dtype=torch.long, device=self.device)
        self._no_depformer = torch.full((slots, lm.dep_q, 1), self.machine.token_ids.zero,
                                        dtype=torch.long, device=self.device)
        self._row_start = 0                  # the first slot of the rows the current step computes
        # Narrow each step to its rows and its started codebooks (CPU: tts_rows.py); CUDA graphs need the full batch.
        lean = self.device.type == "cpu" if lean_steps is None else lean_steps
        self.rows = TtsRows(self.gen, mimi, slots, self._audio_start.tolist(), enabled=lean)
        # model work done: steps, rows computed, codebooks sampled (summed over steps), Mimi decodes
        self.stats = {"steps": 0, "rows": 0, "codebooks": 0, "decoded": 0}

    # ---- set-up -------------------------------------------------------------------------------

    def _check_supported(self) -> None:
        if not self.tts.multi_speaker:
            raise ValueError("this TTS is conditioned by an audio prefix, not speaker embeddings: unsupported")
        if self.tts.multistream:
            raise ValueError("multistream (dialogue) TTS checkpoints are not supported")
        if not self.tts.valid_cfg_conditionings:
            raise ValueError("this TTS is not CFG-distilled (no `cfg` conditioner): unsupported")

    @property
    def lookahead_words(self) -> int:
        return self.machine.second_stream_ahead

    def health(self) -> dict:
        return {"process": None, **self.stats}   # on a thread of the server's own process

    def close(self) -> None:
        pass

    @property
    def first_audio_steps(self) -> int:
        """Model steps a turn takes before its first audio frame: the text-to-audio delay plus the
        acoustic delay. Steps only run once `second_stream_ahead` words are queued."""
        return self.delay_steps + self.gen.max_delay + 1

    def voice_path(self, voice: str) -> Path:
        """The embedding file of one of the server's voices, named as in the voices repo (`vctk/p225_023.wav`).
        A lookup in the list made at start: no path, URL or hub name a client sends reaches the disk or the hub."""
        path = self.voices.get(voice)
        if path is None:
            raise UnknownVoice(f"unknown voice {voice!r}; available: {shown(sorted(self.voices))}")
        return path

    def available_voices(self) -> list[str]:
        """The voices a conversation may name (`config.voice`)."""
        return sorted(self.voices)

    def _offered_voices(self, default: str) -> dict[str, Path]:
        """The voices clients may name, each with its embedding file, found once at start: every voice of a local
        voices folder, or of the hub's voices repo (its embeddings fetched once into the HF cache), plus the
        operator's `--voice`. Nothing is listed, probed or downloaded later because of a client's message."""
        suffix = self.tts.voice_suffix
        folder: Path | None = Path(self.voice_repo)
        if not Path(self.voice_repo).is_dir():
            folder = hub_voices(self.voice_repo, suffix)
        voices = {}
        if folder is not None:
            voices = {str(p.relative_to(folder))[: -len(suffix)]: p for p in sorted(folder.rglob(f"*{suffix}"))}
        if default not in voices:
            voices[default] = self._operator_voice(default, voices)
        return voices

    def _operator_voice(self, voice: str, listed: dict[str, Path]) -> Path:
        """`--voice` outside the list: the operator's own embedding file, or (the hub's voices could not be
        listed, e.g. offline) the one voice fetched or found in the cache."""
        if voice.endswith(".safetensors") and Path(voice).is_file():
            return Path(voice)
        if listed or Path(self.voice_repo).is_dir():
            raise UnknownVoice(f"unknown voice {voice!r}; available: {shown(sorted(listed))}")
        try:
            return self.tts.get_voice_path(voice)
        except Exception as exc:  # hub errors: missing entry, network, auth
            raise UnknownVoice(f"voice {voice!r} not found in {self.voice_repo} ({type(exc).__name__}: {exc})") from exc

    def _attributes(self, voice: str):
        return self.tts.make_condition_attributes([self.voice_path(voice)], cfg_coef=CFG_COEF)

    def _voice_row(self, voice: str) -> torch.Tensor:
        """The cross-attention source for one voice: [T, dim], in the LM's dtype."""
        if voice not in self._voice_rows:
            lm = self.tts.lm
            assert lm.fuser is not None  # _check_supported: a CFG-distilled, speaker-conditioned TTS has one
            cross = lm.fuser.get_cross(self._conditions([self._attributes(voice)]))
            assert cross is not None
            self._voice_rows[voice] = cross[0].to(lm.dtype)
        return self._voice_rows[voice]

    def _conditions(self, attributes: list) -> dict[str, ConditionType]:
        provider = self.tts.lm.condition_provider
        assert provider is not None  # _check_supported: the model is conditioned
        return provider.prepare_and_provide(attributes)

    # ---- turns --------------------------------------------------------------------------------

    def start_turn(self, voice: str | None = None, seed: int | None = None, top_k: int | None = None) -> "TtsTurn":
        """Takes a free slot for a new turn (`top_k`: its audio sampling top-k; None: AUDIO_TOP_K).
        Raises UnknownVoice or TtsCapacity. Any thread."""
        voice = voice or self.default_voice
        self.voice_path(voice)
        with self._lock:
            self._free_released()
            free = [slot for slot, ref in enumerate(self._turns) if ref is None]
            if not free:
                raise TtsCapacity(f"all {self.slots} TTS slots are speaking")
            turn = TtsTurn(self, TurnGenState(free[0], voice, seed, self.machine.new_state([]), top_k))
            # A dropped turn frees its slot: the callback only queues it (it may run on any thread).
            self._turns[turn.slot] = weakref.ref(turn, functools.partial(self._on_turn_dropped, turn.slot))
        return turn

    def _on_turn_dropped(self, slot: int, _ref: weakref.ref) -> None:
        self._released.append(slot)

    def word_entries(self, word: str, first: bool) -> list[Entry]:
        """A word as state-machine entries. script_to_entries does Kyutai's text clean-up and, on a turn's
        first word, prepends the main-speaker token the multi-speaker model expects. Any thread."""
        return script_to_entries(self.tts.tokenizer, self.machine.token_ids, self.tts.mimi.frame_rate, [word],
                                 multi_speaker=first and self.tts.multi_speaker, padding_between=PADDING_BETWEEN)

    def release(self, turn: "TtsTurn") -> None:
        """Frees the turn's slot (if it still holds it). Any thread."""
        with self._lock:
            ref = self._turns[turn.slot]
            if ref is not None and ref() is turn:
                self._turns[turn.slot] = None

    def _free_released(self) -> None:
        while self._released:
            slot = self._released.popleft()
            ref = self._turns[slot]
            if ref is not None and ref() is None:
                self._turns[slot] = None

    # ---- the batched step (model thread) ------------------------------------------------------

    def ready(self, turn: "TtsTurn") -> bool:
        """Whether `turn` may step now. Moves the turn's queued words into its state machine; ends a turn
        with no words. A step that may take the next word needs `second_stream_ahead` words beyond it
        queued, or the text complete (the lookahead stream reads them when the word is taken); a step the
        state machine forces to a pad (between words, while a word's tokens are fed) takes no word and
        may run before they come, so the text-to-audio delay runs while the LLM is still writing."""
        gen = turn.gen
        turn.waits_for_text = False
        if turn.cancelled or gen.finished:
            return False
        entries, ended = turn.take_text()
        machine = gen.machine
        machine.entries.extend(entries)
        if ended and gen.steps == 0 and not machine.entries:
            self._finish(turn)              # nothing to say at all
            return False
        if ended or len(machine.entries) > self.machine.second_stream_ahead:
            return True
        started = gen.steps > 0 or bool(machine.entries)
        turn.waits_for_text = not (started and (bool(machine.queued) or machine.forced_padding > 0))
        return not turn.waits_for_text

    def step(self, turns: "list[TtsTurn]") -> dict["TtsTurn", TtsFrame | None]:
        """One batched step for those of `turns` that may step; returns, per turn that ran, its new 80 ms
        frame, or None while its audio has not started yet."""
        with inference(self.device):
            running = [t for t in turns if self.ready(t)]
            return self._step(running) if running else {}

    def produce(self, turns: "list[TtsTurn]", frames_each: int = 2,
                stop: tp.Callable[[], bool] | None = None) -> dict["TtsTurn", list[TtsFrame]]:
        """Model thread: steps `turns` until each has `frames_each` new frames or cannot step (it waits
        for words, `TtsTurn.waits_for_text`, or it is over), or `stop()` says so between steps. Each step
        is one batched step of the turns that still need a frame: a starting turn runs its
        `first_audio_steps` steps back to back, batched with the turns that start with it, and a speaking
        turn joins only the steps it takes a frame from. A turn's first frame ends the call at once, so
        that it plays without waiting for a second one; `stop` lets the caller bring in turns that came
        meanwhile (the cascade's pump: a turn that starts during another's first frame joins its next
        steps instead of waiting for that frame)."""
        out: dict[TtsTurn, list[TtsFrame]] = {turn: [] for turn in turns}
        taken = {turn: len(turn.gen.machine.consumption_times) for turn in turns}   # entries taken up so far
        while produced := self.step([turn for turn in turns if len(out[turn]) < frames_each]):
            for turn, frame in produced.items():
                if frame is not None and not turn.cancelled:
                    out[turn].append(frame)
                _tell_words_taken(turn, taken)
            if any(frame is not None and frame.index == 0 for frame in produced.values()):
                break
            if stop is not None and stop():
                break
        return out

    def _step(self, running: list["TtsTurn"]) -> dict["TtsTurn", TtsFrame | None]:
        for turn in running:
            if turn.gen.fresh:
                self._prepare_slot(turn.gen)
        slots = [t.slot for t in running]
        self._running = {t.slot: t.gen for t in running}
        for t in running:
            self._steps[t.slot] = t.gen.steps
        self.gen.noise.copy_(self.randomness.draw(slots), non_blocking=True)
        self.gen.rank_for(self.randomness, slots)
        start, rows = self.rows.span(slots)
        self._row_start = start
        self.stats["steps"] += 1
        self.stats["rows"] += rows
        codebooks = self.rows.sampled_codebooks(t.gen.steps for t in running)
        with self.rows.narrowed(start, rows):
            execute = torch.zeros(rows, dtype=torch.bool)
            execute[[slot - start for slot in slots]] = True
            lm = self.tts.lm
            inputs = torch.full((rows, lm.n_q - lm.dep_q, 1), self.machine.token_ids.zero,
                                dtype=torch.long, device=self.device)                 # [R, 0, 1] unless n_q was cut
            self.gen.set_exec_mask(execute.to(self.device))
            # While every running turn is still inside the text-to-audio delay, its audio is all "zero":
            # skip the depformer then, as TTSModel.generate does (and sample only started codebooks after).
            replace = self._no_depformer[start: start + rows] if codebooks == 0 else None
            with self.rows.sampling(codebooks):
                tokens = self.gen.step(inputs, depformer_replace_tokens=replace)
            assert tokens is not None  # support_out_of_sync: never None              # [R, 1 + Q, 1]
        self.stats["codebooks"] += codebooks
        for t in running:
            t.gen.steps += 1
        frames = self._decode(running, tokens, start)
        return {t: frames.get(t) for t in running}

    def _prepare_slot(self, gen: TurnGenState) -> None:
        """A reused slot starts clean: model and codec state wiped, its seed, top-k and voice applied."""
        mask = torch.zeros(self.slots, dtype=torch.bool)
        mask[gen.slot] = True
        mask = mask.to(self.device)
        self.gen.reset_streaming(mask)
        self.tts.mimi.reset_streaming(mask)
        self.randomness.reseed(gen.slot, gen.seed)
        top_k = gen.top_k if gen.top_k is not None else AUDIO_TOP_K
        self.gen.slot_top_k_audio[gen.slot] = top_k
        self.randomness.set_widths(gen.slot, TEXT_TOP_K, top_k)
        if self._slot_voice[gen.slot] != gen.voice:
            self._set_voice(gen.slot, gen.voice)
        gen.fresh = False

    def _set_voice(self, slot: int, voice: str) -> None:
        """Writes the voice into the slot's row of the cross-attention source and refreshes the keys and
        values the cross-attention layers cached from it (moshi computes them once, for the whole batch).

        The one place that reaches into moshi's internals: moshi has no API to change one row's
        conditioning of a streaming LMGen. `gen._streaming_state.condition_cross` is the [B, T, dim]
        cross-attention source LMGen keeps for the whole stream; each StreamingMultiheadAttention with
        `cross_attention` cached its keys/values from it when streaming began (`_streaming_state.k_cross`),
        and `update_streaming_cross_attention_src` recomputes them from the new source.
        """
        state = self.gen._streaming_state
        assert state is not None and state.condition_cross is not None
        row = self._voice_row(voice)
        if row.shape != state.condition_cross.shape[1:]:
            raise UnknownVoice(f"voice {voice!r} has shape {tuple(row.shape)}, the model expects "
                               f"{tuple(state.condition_cross.shape[1:])}")
        state.condition_cross[slot] = row
        for module in self.tts.lm.transformer.modules():
            if (isinstance(module, StreamingMultiheadAttention) and module.cross_attention
                    and module._streaming_state is not None and module._streaming_state.k_cross is not None):
                module.update_streaming_cross_attention_src(state.condition_cross)
        self._slot_voice[slot] = voice

    def _on_text(self, text_tokens: torch.Tensor) -> None:
        """LMGen hook, after the text token is sampled: the state machine turns the model's "pad"/"new
        word" choice into the token actually fed back (the next word's pieces, muxed with lookahead).
        text_tokens: [R], row r = slot start + r of the step's rows."""
        sampled = text_tokens.tolist()
        fed = [self.machine.token_ids.pad] * len(sampled)
        for slot, gen in self._running.items():
            row = slot - self._row_start
            fed[row], _ = self.machine.process(gen.steps, gen.machine, sampled[row])
        text_tokens[:] = torch.tensor(fed, dtype=torch.long, device=text_tokens.device)

    def _on_audio(self, audio_tokens: torch.Tensor) -> None:
        """LMGen hook: before a slot's audio starts (text-to-audio delay plus acoustic delays) its
        codes are the "zero" token, as in TTSModel.generate, but per slot. audio_tokens: [R, Q]."""
        steps = self._steps[self._row_start: self._row_start + audio_tokens.shape[0]]
        before = steps[:, None] < self._audio_start[None, :]
        audio_tokens.masked_fill_(before, self.machine.token_ids.zero)

    def _decode(self, running: list["TtsTurn"], tokens: torch.Tensor, start: int) -> dict["TtsTurn", TtsFrame]:
        """Mimi-decodes the rows whose output frame is real audio (tokens: [R, 1 + Q, 1], row r = slot
        start + r): each such turn's new frame. A turn whose audio is all produced (its last word, then
        `final_padding`) is finished and released."""
        lag = self.first_audio_steps   # after n steps, the output frame holds audio of text step n - lag
        speaking = [t for t in running if t.gen.steps >= lag and not t.gen.finished]
        if not speaking:
            return {}
        rows = self.rows.decode_rows([t.slot for t in speaking])      # D: Mimi's leading rows
        slots = torch.tensor([t.slot for t in speaking], device=self.device)
        codes = torch.zeros((rows, tokens.shape[1] - 1, 1), dtype=torch.long, device=self.device)  # [D, Q, 1]
        codes[slots] = tokens[slots - start, 1:, :].clamp(min=0)
        has_audio = torch.zeros(rows, dtype=torch.bool, device=self.device)
        has_audio[slots] = True
        with self.rows.decoding(rows):
            self.tts.mimi.set_exec_mask(has_audio)
            pcm = self.tts.mimi.decode(codes)[:, 0, :].clamp(-1, 1).float().cpu().numpy()  # [D, F]
        self.stats["decoded"] += 1
        frames = {}
        for turn in speaking:
            gen = turn.gen
            frames[turn] = TtsFrame(pcm[gen.slot].copy(), gen.steps - lag)
            gen.emitted = gen.steps - lag + 1
            end = gen.machine.end_step
            if end is not None and gen.emitted >= end + self.tts.final_padding:
                self._finish(turn)
        return frames

    def _finish(self, turn: "TtsTurn") -> None:
        turn.gen.finished = True
        self.release(turn)


def _tell_words_taken(turn: "TtsTurn", taken: dict["TtsTurn", int]) -> None:
    """Calls the turn's `on_words_taken` when its step took up a queued entry (`taken`: the count before;
    moshi's state machine stamps each entry it pops in `consumption_times`, the count `words_waiting` drops by)."""
    now = len(turn.gen.machine.consumption_times)
    if now > taken[turn] and turn.on_words_taken is not None:
        turn.on_words_taken()
    taken[turn] = now
