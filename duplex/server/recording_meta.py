"""What every recording's `meta.json` says about the server: version, model specs, device, dtype, slots,
the settings that shape the output, and the SHA-256 of each weight file (hashed once, in a thread, at
start: a 7B model's files take a while, and a recording begun before the hashes are ready gets them in
its final `meta.json`)."""

from __future__ import annotations

import argparse
import hashlib
import platform
import typing as tp
from pathlib import Path

CHUNK = 8 * 1024 * 1024


def model_specs(args: argparse.Namespace) -> dict[str, str]:
    from ..models.spec import PRESETS

    preset = PRESETS[args.preset]
    specs: dict[str, str] = {}
    if not args.no_duplex:
        specs["duplex"] = args.moshi_spec or preset.duplex_spec
    if not args.no_cascade:
        specs["stt"] = args.stt_spec or preset.stt_spec
        specs["tts"] = args.tts_spec or preset.tts_spec
        specs["llm"] = args.llm_url or args.llm or preset.llm_spec
        if args.llm_url:
            specs["llm_model"] = args.llm_model or ""
    return specs


def server_meta(args: argparse.Namespace) -> dict[str, tp.Any]:
    import moshi
    import torch

    from .loading import pick_device, pick_dtype

    device = pick_device(args.device)
    return {
        "preset": args.preset, "models": model_specs(args), "device": device,
        "dtype": str(pick_dtype(args.dtype, device)).removeprefix("torch."),
        "slots": {"duplex": args.slots, "cascade": args.cascade_slots},
        "settings": {"interrupt_hold_ms": args.interrupt_hold_ms, "max_wait_ms": args.max_wait_ms,
                     "speech_threshold_dbfs": args.speech_threshold_dbfs,
                     "end_of_turn_silence_ms": args.end_of_turn_silence_ms, "llm_max_tokens": args.llm_max_tokens,
                     "voice": args.voice},
        "versions": {"torch": torch.__version__, "moshi": getattr(moshi, "__version__", "?"),
                     "python": platform.python_version()},
    }


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


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


def weights_job(args: argparse.Namespace) -> tp.Callable[[], dict]:
    specs = {k: v for k, v in model_specs(args).items() if k != "llm_model"}

    def job() -> dict:
        out: dict[str, dict[str, str]] = {}
        for name, spec in specs.items():
            try:
                out[name] = {str(p.name): sha256(p) for p in weight_files(name, spec)}
            except Exception as exc:   # metadata only: say why, never stop the server
                out[name] = {"error": str(exc)}
        return out
    return job
