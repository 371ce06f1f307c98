"""Model loading for `duplex serve`: device, dtype and threads, then each engine with its models.

Start-up errors a user can fix are `StartupError`s whose message says how. torch is imported
inside the functions, so that `duplex --help` and the client commands start at once.
"""

from __future__ import annotations

import argparse
import os
import typing as tp

from ..engines.base import Engine

if tp.TYPE_CHECKING:  # torch and the models load at run time only (fast `--help`)
    import torch

    from ..engines.cascade import CascadeEngine
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


def load_duplex_model(args: argparse.Namespace, device: str, dtype: torch.dtype) -> MoshiBatch:
    from tqdm import tqdm

    from ..models.moshi_batch import MoshiBatch
    from ..models.spec import PRESETS, resolve_checkpoint

    spec = args.moshi_spec or PRESETS[args.preset].duplex_spec
    with tqdm(total=3, desc=f"duplex model {spec}", unit="stage", disable=args.quiet_progress) as bar:
        bar.set_postfix_str("weights")
        checkpoint = resolve_checkpoint(spec)
        bar.update()
        bar.set_postfix_str(f"loading on {device} ({str(dtype).removeprefix('torch.')})")
        model = MoshiBatch(checkpoint, args.slots, device, dtype,
                           prefix_cache_bytes=int(getattr(args, "prefix_cache_mb", 256.0) * (1 << 20)))
        bar.update()
        bar.set_postfix_str("warm-up" + (" + CUDA graphs" if device.startswith("cuda") else ""))
        model.warmup()
        bar.update()
    return model


def load_voices(args: argparse.Namespace, model: MoshiBatch) -> VoiceLibrary | None:
    """A persona model's voice prompts (--voices, else the checkpoint's voices.tgz), encoded once at start."""
    from pathlib import Path

    from ..models.persona import VoiceLibrary
    from ..models.personaplex import voices_dir
    from ..models.spec import PRESETS, model_directory

    if not model.persona:
        if getattr(args, "voices", None):
            raise StartupError("--voices is for persona models (--preset personaplex or tiny-personaplex)")
        return None
    directory: Path | None = Path(args.voices).expanduser() if getattr(args, "voices", None) else None
    if directory is None:
        folder = model_directory(args.moshi_spec or PRESETS[args.preset].duplex_spec)
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


def build_cascade_engine(args: argparse.Namespace, device: str, dtype: torch.dtype) -> CascadeEngine:
    from tqdm import tqdm

    from ..engines.cascade import CascadeEngine
    from ..models.llm import load_llm
    from ..models.spec import PRESETS, resolve_checkpoint
    from ..models.stt import SttBatch
    from ..models.tts import TtsEngineModel, UnknownVoice

    preset = PRESETS[args.preset]
    stt_spec, tts_spec = args.stt_spec or preset.stt_spec, args.tts_spec or preset.tts_spec
    llm_spec = args.llm_url or args.llm or preset.llm_spec
    slots = args.cascade_slots
    with tqdm(total=3, desc="cascade models", unit="model", disable=args.quiet_progress) as bar:
        bar.set_postfix_str(f"STT {stt_spec}")
        stt = SttBatch(resolve_checkpoint(stt_spec), slots, device, dtype)
        bar.update()
        bar.set_postfix_str(f"TTS {tts_spec}")
        try:
            tts = TtsEngineModel(resolve_checkpoint(tts_spec), slots, device, dtype, voice=args.voice)
        except UnknownVoice as exc:
            raise StartupError(f"--voice: {exc}") from None
        bar.update()
        bar.set_postfix_str(f"LLM {llm_spec}")
        llm = load_llm(llm_spec, device, model=args.llm_model, token_timeout=args.llm_timeout)
        bar.update()
    return CascadeEngine(stt, llm, tts, max_tokens=args.llm_max_tokens, speech_threshold_dbfs=args.speech_threshold_dbfs,
                         end_of_turn_silence_ms=args.end_of_turn_silence_ms, max_wait_ms=args.max_wait_ms,
                         max_queue_frames=args.max_queue_frames)


def set_cpu_threads(requested: int, device: str) -> int:
    """Torch's intra-op threads spin on every core they own. On CPU, leave one core to the event loop
    (sockets, codecs): a step a little slower beats a server that cannot answer while it runs."""
    import torch

    threads = requested if requested > 0 else max(1, (os.cpu_count() or 2) - (0 if device != "cpu" else 1))
    torch.set_num_threads(threads)
    return threads


def build_engines(args: argparse.Namespace) -> dict[str, Engine]:
    device = pick_device(args.device)
    set_cpu_threads(args.threads, device)
    dtype = pick_dtype(args.dtype, device)
    from ..engines.duplex import DuplexEngine

    engines: dict[str, Engine] = {}
    duplex_model = None if args.no_duplex else load_duplex_model(args, device, dtype)
    cascade = None if args.no_cascade else build_cascade_engine(args, device, dtype)
    if duplex_model is not None:
        # duplex sessions borrow the cascade's recogniser, when there is one (transcribe_user)
        engines["duplex"] = DuplexEngine(duplex_model, voices=load_voices(args, duplex_model),
                                         prefill=getattr(args, "prefill", "parallel"), max_wait_ms=args.max_wait_ms,
                                         max_queue_frames=args.max_queue_frames,
                                         interrupt_hold_ms=args.interrupt_hold_ms,
                                         speech_threshold_dbfs=args.speech_threshold_dbfs, transcribers=cascade)
    if cascade is not None:
        engines["cascade"] = cascade
    if not engines:
        raise StartupError("no engine to serve: drop --no-duplex or --no-cascade")
    return engines
