"""Where the server meets the models (the composition root): device, dtype and threads, then each engine
with its models; the model specs and weight files a recording's meta.json names.

This module (and `options.py`, for the presets in `--help`) is the only server code that imports
`models`; the rest of the server talks to engines (tests/test_layout.py holds that). Start-up errors a
user can fix are `StartupError`s whose message says how. torch is imported inside the functions, so that
`duplex --help` and the client commands start at once.
"""

from __future__ import annotations

import os
import typing as tp
import urllib.parse
from pathlib import Path

from ..engines.base import Engine
from .options import ServeOptions

if tp.TYPE_CHECKING:  # torch and the models load at run time only (fast `--help`)
    import torch

    from ..engines.cascade import CascadeEngine
    from ..engines.turns import PauseRule
    from ..models.moshi_batch import MoshiBatch
    from ..models.persona import VoiceLibrary


class StartupError(RuntimeError):
    """A problem the user can fix; the message says how."""


def pick_device(requested: str) -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise StartupError(
            f"--device {requested} was asked for, but no CUDA GPU is usable here "
            f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'none'}).\n"
            "  Use --device cpu (with --preset tiny for real-time speed), or check the NVIDIA driver.")
    return requested


def pick_dtype(requested: str, device: str) -> torch.dtype:
    import torch

    if requested == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[requested]


def load_duplex_model(options: ServeOptions, device: str, dtype: torch.dtype) -> MoshiBatch:
    from tqdm import tqdm

    from ..models.moshi_batch import MoshiBatch
    from ..models.spec import PRESETS, resolve_checkpoint

    spec = options.moshi_spec or PRESETS[options.preset].duplex_spec
    with tqdm(total=3, desc=f"duplex model {spec}", unit="stage", disable=options.quiet_progress) as bar:
        bar.set_postfix_str("weights")
        checkpoint = resolve_checkpoint(spec)
        bar.update()
        bar.set_postfix_str(f"loading on {device} ({str(dtype).removeprefix('torch.')})")
        model = MoshiBatch(checkpoint, options.slots, device, dtype,
                           prefix_cache_bytes=int(options.prefix_cache_mb * (1 << 20)),
                           guidance=options.guidance == "on")
        bar.update()
        bar.set_postfix_str("warm-up" + (" + CUDA graphs" if device.startswith("cuda") else ""))
        model.warmup()
        bar.update()
    return model


def load_voices(options: ServeOptions, model: MoshiBatch) -> VoiceLibrary | None:
    """A persona model's voice prompts (--voices, else the checkpoint's voices.tgz), encoded once at start."""
    from ..models.persona import VoiceLibrary
    from ..models.personaplex import voices_dir
    from ..models.spec import PRESETS, model_directory

    if not model.persona:
        if options.voices:
            raise StartupError("--voices is for persona models (--preset personaplex or tiny-personaplex)")
        return None
    directory: Path | None = Path(options.voices).expanduser() if options.voices else None
    if directory is None:
        folder = model_directory(options.moshi_spec or PRESETS[options.preset].duplex_spec)
        directory = voices_dir(folder) if folder is not None else None
    if directory is None:
        return None
    if not directory.is_dir():
        raise StartupError(f"--voices {directory}: not a folder")
    voices = VoiceLibrary(directory, model.encode_voice)
    for name in voices.names():
        if not name.endswith(".pt"):
            voices.codes(name)
    return voices


def cascade_specs(options: ServeOptions) -> tuple[str, str, str]:
    """The cascade's STT, TTS and LLM: each the options' own, else the preset's."""
    from ..models.spec import PRESETS

    preset = PRESETS[options.preset]
    return (options.stt_spec or preset.stt_spec, options.tts_spec or preset.tts_spec,
            options.llm_url or options.llm or preset.llm_spec)


def launch_cascade_children(options: ServeOptions, device: str, dtype: torch.dtype) -> tuple[tp.Any, tp.Any]:
    """The STT's and TTS's child processes (those the options put in their own process), launched without
    waiting: they load while this process loads the duplex model and the LLM (`build_cascade_engine` waits)."""
    from ..models.stt_process import SttProcess
    from ..models.tts_process import TtsProcess

    if options.no_cascade:
        return None, None
    stt_spec, tts_spec, _ = cascade_specs(options)
    slots = options.cascade_slots
    stt = SttProcess(stt_spec, slots, device, dtype, wait=False) if in_own_process(options.stt_process, device) else None
    tts = (TtsProcess(tts_spec, slots, device, dtype, voice=options.voice, wait=False)
           if in_own_process(options.tts_process, device) else None)
    return stt, tts


def build_cascade_engine(options: ServeOptions, device: str, dtype: torch.dtype,
                         children: tuple[tp.Any, tp.Any] = (None, None)) -> CascadeEngine:
    from tqdm import tqdm

    from ..engines.cascade import CascadeEngine
    from ..models.llm import load_llm
    from ..models.spec import resolve_checkpoint
    from ..models.stt import SttBatch, SttModel
    from ..models.stt_process import SttProcessError
    from ..models.tts import TtsEngineModel, UnknownVoice
    from ..models.tts_process import TtsProcessError
    from ..models.tts_turn import SpeechModel

    stt_spec, tts_spec, llm_spec = cascade_specs(options)
    slots = options.cascade_slots
    stt_child, tts_child = children          # launched by launch_cascade_children, or None: load them here
    stt_own, tts_own = stt_child is not None, tts_child is not None
    stt: SttModel
    tts: SpeechModel[tp.Any]
    with tqdm(total=3, desc="cascade models", unit="model", disable=options.quiet_progress) as bar:
        bar.set_postfix_str(f"LLM {llm_spec}")
        llm = load_llm(llm_spec, device, model=options.llm_model, token_timeout=options.llm_timeout)
        bar.update()
        bar.set_postfix_str(f"STT {stt_spec}" + (" (own process)" if stt_own else ""))
        try:
            if stt_child is not None:
                stt_child.wait_ready()
                stt = stt_child
            else:
                stt = SttBatch(resolve_checkpoint(stt_spec), slots, device, dtype)
            bar.update()
            bar.set_postfix_str(f"TTS {tts_spec}" + (" (own process)" if tts_own else ""))
            if tts_child is not None:
                tts_child.wait_ready()
                tts = tts_child
            else:
                tts = TtsEngineModel(resolve_checkpoint(tts_spec), slots, device, dtype, voice=options.voice)
        except UnknownVoice as exc:
            raise StartupError(f"--voice: {exc}") from None
        except (SttProcessError, TtsProcessError) as exc:
            raise StartupError(str(exc)) from None
        bar.update()
    lookahead = tts.lookahead_words
    if options.llm_words_ahead < 0 or 0 < options.llm_words_ahead <= lookahead:
        raise StartupError(f"--llm-words-ahead: give 0 (no pacing) or more than the TTS's lookahead of {lookahead} "
                           f"words (it needs those to speak at all), e.g. {lookahead + 2}")
    pause, why = end_of_turn_rule(options, stt_spec, stt.has_pause)
    return CascadeEngine(stt, llm, tts, max_tokens=options.llm_max_tokens, llm_words_ahead=options.llm_words_ahead,
                         speech_threshold_dbfs=options.speech_threshold_dbfs,
                         end_of_turn_silence_ms=options.end_of_turn_silence_ms, max_wait_ms=options.max_wait_ms,
                         max_queue_frames=options.max_queue_frames, pause=pause, end_of_turn_why=why)


def in_own_process(choice: str, device: str) -> bool:
    """--stt-process, --tts-process: auto moves the model out on CPU, where it was measured to help
    (docs/cascade.md)."""
    return choice == "on" or (choice == "auto" and device == "cpu")


def end_of_turn_rule(options: ServeOptions, stt_spec: str, has_pause_head: bool) -> tuple[PauseRule | None, str]:
    """The cascade's end-of-turn rule: a `PauseRule` (semantic) or None (energy), and why, for /health.
    auto takes the pause head when the STT has one and its weights are trained: a tiny preset's random head
    says nothing about the user (docs/stt.md), and an STT exported without its extra heads has none."""
    from ..engines.turns import PauseRule

    for name in ("pause_end_threshold", "pause_barge_in_threshold"):
        if not 0.0 <= getattr(options, name) <= 1.0:
            raise StartupError(f"--{name.replace('_', '-')} is a probability: give a number from 0 to 1")
    if not 0.0 < options.pause_ema <= 1.0:
        raise StartupError("--pause-ema is a weight: give a number above 0 and at most 1 (1 = no smoothing)")
    random_weights = stt_spec.startswith("tiny:")
    if options.end_of_turn_rule == "energy":
        return None, "--end-of-turn-rule energy"
    if not has_pause_head:
        if options.end_of_turn_rule == "pause":
            raise StartupError(f"--end-of-turn-rule pause: the STT {stt_spec} has no pause head (its extra heads); "
                               "use --end-of-turn-rule auto or energy")
        return None, f"the STT {stt_spec} has no pause head"
    if options.end_of_turn_rule == "auto" and random_weights:
        return None, f"the STT {stt_spec} has random weights: its pause head says nothing"
    rule = PauseRule(ema=options.pause_ema, end_threshold=options.pause_end_threshold,
                     barge_in_threshold=options.pause_barge_in_threshold, min_pause_ms=options.min_pause_ms,
                     grace_ms=options.barge_in_grace_ms)
    return rule, f"--end-of-turn-rule {options.end_of_turn_rule}: the STT {stt_spec} has a pause head" + (
        " (random weights)" if random_weights else "")


def set_cpu_threads(requested: int, device: str) -> int:
    """Torch's intra-op threads spin on every core they own. On CPU, leave one core to the event loop
    (sockets, codecs): a step a little slower beats a server that cannot answer while it runs."""
    import torch

    threads = requested if requested > 0 else max(1, (os.cpu_count() or 2) - (0 if device != "cpu" else 1))
    torch.set_num_threads(threads)
    return threads


def build_engines(options: ServeOptions) -> dict[str, Engine]:
    """Every engine the options ask for, its models loaded and warmed up (a spec that cannot be had: StartupError)."""
    from ..models.spec import WeightsUnavailable

    try:
        return _build_engines(options)
    except WeightsUnavailable as exc:
        raise StartupError(str(exc)) from None


def _build_engines(options: ServeOptions) -> dict[str, Engine]:
    device = pick_device(options.device)
    set_cpu_threads(options.threads, device)
    dtype = pick_dtype(options.dtype, device)
    from ..engines.duplex import DuplexEngine

    engines: dict[str, Engine] = {}
    children = launch_cascade_children(options, device, dtype)   # they load while the duplex model does
    duplex_model = None if options.no_duplex else load_duplex_model(options, device, dtype)
    cascade = None if options.no_cascade else build_cascade_engine(options, device, dtype, children)
    if duplex_model is not None:
        # duplex sessions borrow the cascade's recogniser, when there is one (transcribe_user)
        engines["duplex"] = DuplexEngine(duplex_model, voices=load_voices(options, duplex_model),
                                         prefill=options.prefill, max_wait_ms=options.max_wait_ms,
                                         max_queue_frames=options.max_queue_frames,
                                         interrupt_hold_ms=options.interrupt_hold_ms,
                                         speech_threshold_dbfs=options.speech_threshold_dbfs, transcribers=cascade)
    if cascade is not None:
        engines["cascade"] = cascade
    if not engines:
        raise StartupError("no engine to serve: drop --no-duplex or --no-cascade")
    return engines


# --- what a recording says about the models (recording/meta.py writes it) ---------------------------
def model_specs(options: ServeOptions) -> dict[str, str]:
    """The spec of each model the server loads: the preset's, or the flag that replaces it."""
    from ..models.spec import PRESETS

    preset = PRESETS[options.preset]
    specs: dict[str, str] = {}
    if not options.no_duplex:
        specs["duplex"] = options.moshi_spec or preset.duplex_spec
    if not options.no_cascade:
        specs["stt"], specs["tts"], llm = cascade_specs(options)
        specs["llm"] = without_credentials(llm) if options.llm_url else llm
        if options.llm_url:
            specs["llm_model"] = options.llm_model or ""
    return specs


def without_credentials(url: str) -> str:
    """An endpoint URL as a recording may name it: no user info (`user:key@`), query (`?api_key=`) or fragment."""
    parts = urllib.parse.urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


def weight_files(name: str, spec: str) -> list[Path]:
    """The files a spec loads its weights and tokenizer from (local or already in the hub cache)."""
    from ..models.spec import WEIGHTS_DIR, resolve_checkpoint

    if name == "llm":
        directory = WEIGHTS_DIR / "tiny-llm" if spec == "tiny" else Path(spec).expanduser()
        if not directory.is_dir():
            return []   # a hub id or an endpoint URL: the spec is all we can name
        return sorted(p for p in directory.iterdir() if p.suffix in (".safetensors", ".json", ".model", ".bin"))
    checkpoint = resolve_checkpoint(spec)
    files = [checkpoint.moshi_weights, checkpoint.mimi_weights, checkpoint.tokenizer, checkpoint.lora_weights]
    return [Path(f) for f in files if f is not None]


def device_and_dtype(options: ServeOptions) -> tuple[str, str]:
    """The device and LM dtype the options resolve to, as names (`cuda`, `bfloat16`)."""
    device = pick_device(options.device)
    return device, str(pick_dtype(options.dtype, device)).removeprefix("torch.")
