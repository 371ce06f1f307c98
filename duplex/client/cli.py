"""`duplex client`: talk to a running server from a WAV file or the microphone.

Prints transcripts as they arrive and a summary (frames, turnaround, response latency) at the end;
optionally writes the assistant's audio time-aligned to the input.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
import typing as tp

import aiohttp
import numpy as np

from ..audio import FRAME_S, FRAME_SAMPLES, SAMPLE_RATE, read_wav_mono24k, write_wav
from ..config import CONFIG_SCHEMA
from ..protocol import CODECS, MODES
from . import webrtc_cli
from .connection import DuplexClient, Event, ServerClosed
from .mic import open_mic_or_explain
from .report import EventPrinter, HumanPrinter, JsonPrinter, Transfer, summarize
from .timing import FramePacer, align_assistant_audio, split_frames
from .tools import ToolSet

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
STOP_ACK_TIMEOUT_S = 10.0
TEXT_TURN_TIMEOUT_S = 60.0
# cascade, after the input: with no user turn detected this long after the server heard the whole
# input (tail included), no reply is coming.
NO_TURN_S = 3.0


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Adds the `client` sub-command to the main CLI."""
    p = subparsers.add_parser(
        "client", help="talk to a running server from a WAV file or the microphone",
        description="Connect to a duplex server's /ws endpoint, stream audio from a file or the microphone, "
                    "print transcripts and a latency summary, and optionally save the assistant's audio.")
    p.add_argument("--url", default="http://127.0.0.1:8998",
                   help="server address: http(s)://host:port (then /ws is used) or a full ws(s)://host:port/ws URL "
                        "(default: %(default)s)")
    p.add_argument("--mode", choices=MODES, default=None,
                   help="conversation engine: duplex (Moshi), cascade (STT+LLM+TTS) or auto "
                        "(duplex when a slot is free); default: the server's choice (auto)")
    p.add_argument("--codec", choices=CODECS, default="opus",
                   help="audio encoding on the wire: opus (Ogg Opus pages) or pcm16 (raw 16-bit samples); "
                        "default: %(default)s")
    p.add_argument("--token", default=None, help="access token, when the server was started with one")
    p.add_argument("--transport", choices=("websocket", "webrtc"), default="websocket",
                   help="websocket: the /ws protocol; webrtc: a call to /v1/realtime/calls as OpenAI's WebRTC flow "
                        "(client secret, the oai-events data channel, audio on an Opus track; docs/webrtc.md). "
                        "default: %(default)s")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--input", metavar="WAV", default=None,
                        help="audio file to send as the user's voice (any format sphn reads; "
                             "converted to 24 kHz mono)")
    source.add_argument("--mic", action="store_true",
                        help="stream the live microphone and play the reply (needs sounddevice + PortAudio); "
                             "Ctrl-C ends the conversation")
    p.add_argument("--output", metavar="WAV", default=None,
                   help="write the assistant's audio here, time-aligned to the input "
                        "(sample i of the output is heard with sample i of the input)")
    p.add_argument("--fast", action="store_true",
                   help="send the input as fast as possible instead of at real-time pace")
    p.add_argument("--tail-seconds", type=float, default=2.0,
                   help="seconds of silence sent after the input, so the server hears the user's turn end "
                        "(duplex: and the reply can finish) (default: %(default)s)")
    p.add_argument("--reply-timeout", metavar="SECONDS", type=float, default=30.0,
                   help="cascade: after the input, wait until the assistant's reply has ended (tts_end or tts_stop), "
                        "at most this long; no wait when no user turn was detected (default: %(default)s)")
    _add_config_flags(p)
    p.add_argument("--text", default=None,
                   help="send this text as a user turn (cascade); alone, waits for the spoken reply")
    p.add_argument("--json", action="store_true",
                   help="print every server event as one JSON line (and a final summary line) "
                        "instead of the human format")
    p.set_defaults(func=run)
    return p


def _add_config_flags(p: argparse.ArgumentParser) -> None:
    """One flag per config key (`--top-k` for `top_k`), with the schema's type, doc and range."""
    group = p.add_argument_group("conversation config (sent in `start`; default: the server's)")
    for key in CONFIG_SCHEMA.values():
        flag = "--" + key.name.replace("_", "-")
        help_text = key.doc + (f"; range {key.range_text}" if key.range_text else "")
        if key.kind is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif key.kind is list:   # `--tools FILE.py`: the file's functions, offered and run by the client
            group.add_argument(flag, metavar="FILE.py", default=None, help=help_text)
        else:
            group.add_argument(flag, type=key.kind, default=None, help=help_text)


def build_config(args: argparse.Namespace) -> dict[str, tp.Any] | None:
    """The `config` object of `start`, from the flags that were given (None when none were)."""
    config = {name: getattr(args, name) for name, key in CONFIG_SCHEMA.items()
              if getattr(args, name) is not None and key.kind is not list}   # --tools: the client registers them
    return config or None


def run(args: argparse.Namespace) -> int:
    """Entry point of `duplex client`; returns the process exit code."""
    if not (args.input or args.mic or args.text):
        print("duplex client: give --input WAV, --mic or --text", file=sys.stderr)
        return EXIT_USAGE
    if args.tail_seconds < 0:
        print("duplex client: --tail-seconds must be >= 0", file=sys.stderr)
        return EXIT_USAGE
    if args.reply_timeout < 0:
        print("duplex client: --reply-timeout must be >= 0", file=sys.stderr)
        return EXIT_USAGE
    user_pcm = None
    if args.input:
        try:
            user_pcm = read_wav_mono24k(args.input)
        except Exception as exc:  # sphn raises several kinds for a missing or unreadable file
            print(f"duplex client: cannot read {args.input}: {exc}", file=sys.stderr)
            return EXIT_USAGE
    mic = None
    if args.mic:
        mic = open_mic_or_explain()
        if mic is None:
            return EXIT_USAGE
    try:
        if args.transport == "webrtc":
            return asyncio.run(webrtc_cli.converse(args, build_config(args), user_pcm, mic))
        return asyncio.run(_converse(args, user_pcm, mic))
    except BrokenPipeError:  # e.g. `duplex client --json ... | head`: the reader left, not an error
        sys.stdout = open(os.devnull, "w")
        return EXIT_OK
    except KeyboardInterrupt:  # a second Ctrl-C, or one before the conversation began
        return 130


# ---- one conversation -----------------------------------------------------------------------------

async def _converse(args: argparse.Namespace, user_pcm: np.ndarray | None, mic: tp.Any) -> int:
    printer: EventPrinter = JsonPrinter() if args.json else HumanPrinter(sys.stdout.isatty())
    began = time.monotonic()
    try:
        tools = ToolSet.from_file(args.tools) if args.tools else None
    except Exception as exc:  # noqa: BLE001 - whatever the user's file raises, say so and stop
        print(f"duplex client: cannot load tools from {args.tools}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    try:
        client = await DuplexClient.connect(args.url, mode=args.mode, codec=args.codec, token=args.token)
    except (ServerClosed, TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
        print(f"duplex client: cannot connect to {args.url}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if tools is not None:
        client.tools = tools
    stop_requested = asyncio.Event()
    _install_ctrl_c(stop_requested)
    transfer = Transfer()
    printer.on_event(Event("ready", client.ready, time.monotonic()))
    printing = asyncio.create_task(_print_events(client, printer))
    exit_code = EXIT_OK
    try:
        await client.start(args.mode, build_config(args))
        if not await _started(client):
            return EXIT_FAILED
        if args.text:
            transfer.stream_start = time.monotonic()
            await client.text_input(args.text)
        if user_pcm is not None:
            tail = np.zeros(int(round(args.tail_seconds * SAMPLE_RATE)), dtype=np.float32)
            await _send_file(client, np.concatenate([user_pcm, tail]), args.fast, transfer, stop_requested)
        elif mic is not None:
            await _send_mic(client, mic, transfer, stop_requested)
        else:
            await _wait_text_turn(client, stop_requested)
        mode = _effective_mode(client, args.mode)
        if mode == "duplex":
            await _wait_answers(client, len(transfer.sent_at))
        elif mode == "cascade" and user_pcm is not None and not stop_requested.is_set():
            await _wait_cascade_reply(client, transfer, stop_requested, args.reply_timeout)
        exit_code = await _stop(client)
    except ServerClosed as exc:
        print(f"duplex client: {exc}", file=sys.stderr)
        exit_code = EXIT_FAILED
    finally:
        if mic is not None:
            mic.close()
        await client.close()
        await _quietly(asyncio.wait_for(printing, timeout=2.0))
    printer.flush()
    mode = _effective_mode(client, args.mode)
    if args.output:
        _write_output(args.output, client, transfer, mode)
    printer.on_summary(summarize(client, transfer, mode, time.monotonic() - began))
    return exit_code


async def _send_file(client: DuplexClient, pcm: np.ndarray, fast: bool, transfer: Transfer,
                     stop_requested: asyncio.Event) -> None:
    pacer = FramePacer(time.monotonic())
    transfer.stream_start = pacer.start  # the aligned output is on the input's timeline
    for k, frame in enumerate(split_frames(pcm)):
        if not fast:
            await _sleep_unless(stop_requested, pacer.delay(k))
        if stop_requested.is_set():
            return
        await client.send_audio(frame)
        transfer.sent_at.append(time.monotonic())
        if fast:
            await asyncio.sleep(0)  # let the reader and printer run between frames


async def _send_mic(client: DuplexClient, mic: tp.Any, transfer: Transfer, stop_requested: asyncio.Event) -> None:
    frames = mic.start(asyncio.get_running_loop())
    print("listening on the microphone; Ctrl-C to stop", file=sys.stderr)
    transfer.stream_start = time.monotonic()
    played = 0
    while not stop_requested.is_set():
        frame = await _get_unless(stop_requested, frames)
        if frame is None:
            return
        await client.send_audio(frame)
        transfer.sent_at.append(time.monotonic())
        for chunk in client.audio[played:]:  # play what arrived since the last frame
            mic.play(chunk.pcm)
        played = len(client.audio)


async def _wait_text_turn(client: DuplexClient, stop_requested: asyncio.Event) -> None:
    """Text-only turn: wait until the spoken reply ends (or is cut, or fails)."""
    def turn_over(event: Event) -> bool:
        return event.type in ("tts_end", "tts_stop", "error")

    async def watch() -> None:
        async for item in client.stream():
            if isinstance(item, Event) and turn_over(item):
                return

    if any(turn_over(e) for e in client.events):
        return
    watcher = asyncio.create_task(watch())
    stopper = asyncio.create_task(stop_requested.wait())
    await asyncio.wait({watcher, stopper}, timeout=TEXT_TURN_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED)
    watcher.cancel()
    stopper.cancel()


def cascade_reply_state(events: tp.Iterable[Event]) -> str:
    """Where the cascade's latest reply stands, from the events so far.

    `none`: no user turn yet; `waiting`: the LLM works on a turn, no audio yet; `speaking`;
    `ended`: the latest reply ended (`tts_end`) or was cut (`tts_stop`); `failed`: an error came
    instead of a reply. A new user turn (`llm_status`) starts over at `waiting`.
    """
    state = "none"
    for event in events:
        if event.type == "llm_status":
            state = "waiting"
        elif event.type == "tts_start":
            state = "speaking"
        elif event.type in ("tts_end", "tts_stop") and state == "speaking":
            state = "ended"
        elif event.type == "error" and state == "waiting":
            state = "failed"
    return state


async def _wait_cascade_reply(client: DuplexClient, transfer: Transfer, stop_requested: asyncio.Event,
                              reply_timeout: float) -> None:
    """After the input: wait until the reply to it is over, so a reply longer than the tail is not cut off.

    Waits at least until the server has heard the whole input (on its real-time clock, even with
    --fast), then until the latest reply ended, or NO_TURN_S more when no user turn was detected;
    at most `reply_timeout` seconds after the input's end.
    """
    now = time.monotonic()
    heard_all = (transfer.stream_start or now) + len(transfer.sent_at) * FRAME_S
    deadline = max(now, heard_all) + reply_timeout
    stopper = asyncio.create_task(stop_requested.wait())
    try:
        while not stopper.done() and not client.closed:
            now = time.monotonic()
            state = cascade_reply_state(client.events)
            if now >= deadline:
                if state in ("waiting", "speaking"):
                    print(f"duplex client: the reply had not ended {reply_timeout:g} s after the input "
                          "(--reply-timeout)", file=sys.stderr)
                return
            if now >= heard_all and (state in ("ended", "failed") or (state == "none" and now >= heard_all + NO_TURN_S)):
                return
            # sleep until the next event, or until a verdict may change without one
            wake = heard_all if now < heard_all else heard_all + NO_TURN_S if state == "none" else deadline
            await _next_event_unless(client, stopper, timeout=min(wake, deadline) - now)
    finally:
        await _cancel(stopper)


async def _next_event_unless(client: DuplexClient, stopper: asyncio.Task, timeout: float) -> None:
    """Returns on the client's next event, when `stopper` is done, or after `timeout` seconds."""
    count = len(client.events)
    waiter = asyncio.create_task(client.wait_until(lambda: True if len(client.events) > count else None,
                                                   timeout=max(0.0, timeout), what="a server event"))
    await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
    await _cancel(waiter)


async def _stop(client: DuplexClient) -> int:
    """Sends `stop` and waits for its acknowledgement."""
    await client.stop()
    try:
        await client.wait_for("stop_acknowledged", timeout=STOP_ACK_TIMEOUT_S)
    except TimeoutError:
        print(f"duplex client: no stop_acknowledged within {STOP_ACK_TIMEOUT_S:g} s", file=sys.stderr)
        return EXIT_FAILED
    await _quietly(client.wait_for("metrics", timeout=0.5))  # the stop-time metrics, if they come
    return EXIT_OK


def _write_output(path: str, client: DuplexClient, transfer: Transfer, mode: str | None) -> None:
    pcm = align_assistant_audio(client.audio, by_arrival=(mode != "duplex"),
                                stream_start=transfer.stream_start or 0.0,
                                min_samples=len(transfer.sent_at) * FRAME_SAMPLES)
    write_wav(path, pcm)
    print(f"wrote {len(pcm) / SAMPLE_RATE:.2f} s of assistant audio to {path}", file=sys.stderr)


async def _started(client: DuplexClient, timeout: float = 15.0) -> bool:
    """Waits for the answer to `start`: a `status` (go on) or an `error` (e.g. capacity: give up).
    Knowing the mode before streaming matters: duplex runs wait for one reply frame per frame sent."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not client.closed:
        answer = next((e for e in client.events if e.type in ("status", "error")), None)
        if answer is not None and answer.type == "status":
            return True
        if answer is not None:
            print(f"duplex client: the server refused to start: {answer.data.get('code')}: "
                  f"{answer.data.get('message')}", file=sys.stderr)
            return False
        await asyncio.sleep(0.01)
    print(f"duplex client: no answer to `start` within {timeout:g} s", file=sys.stderr)
    return False


def _effective_mode(client: DuplexClient, requested: str | None) -> str | None:
    """The mode the server chose (from `status` events), else what was asked for."""
    for event in client.events:
        if event.type == "status" and event.data.get("mode") in ("duplex", "cascade"):
            return event.data["mode"]
    return requested


# ---- small async helpers --------------------------------------------------------------------------

def _install_ctrl_c(stop_requested: asyncio.Event) -> None:
    """First Ctrl-C ends the conversation cleanly; a second one kills the client."""
    loop = asyncio.get_running_loop()

    def on_sigint() -> None:
        stop_requested.set()
        loop.remove_signal_handler(signal.SIGINT)

    try:
        loop.add_signal_handler(signal.SIGINT, on_sigint)
    except (NotImplementedError, RuntimeError):  # Windows, or not the main thread
        pass


async def _sleep_unless(stop_requested: asyncio.Event, seconds: float) -> None:
    if seconds > 0:
        await _quietly(asyncio.wait_for(stop_requested.wait(), timeout=seconds))


async def _get_unless(stop_requested: asyncio.Event, queue: asyncio.Queue) -> tp.Any:
    getter = asyncio.create_task(queue.get())
    stopper = asyncio.create_task(stop_requested.wait())
    done, _ = await asyncio.wait({getter, stopper}, return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    if getter in done:
        return getter.result()
    getter.cancel()
    return None


async def _cancel(task: asyncio.Task) -> None:
    """Cancels a task and waits until it has finished; its outcome (a timeout, say) is dropped."""
    task.cancel()
    await asyncio.wait({task})
    if not task.cancelled():
        task.exception()  # retrieved, so asyncio does not log it as never retrieved


async def _wait_answers(client: DuplexClient, n: int, quiet_s: float = 5.0) -> None:
    """Duplex answers every frame sent with one: waits for them as long as they keep coming (with --fast a
    loaded server may take longer than any fixed bound to step through them), giving up after `quiet_s`
    without a new one."""
    while client.binary_messages < n:
        have = client.binary_messages
        await _quietly(client.wait_audio_frames(have + 1, timeout=quiet_s))
        if client.binary_messages == have:
            return


async def _quietly(awaitable: tp.Awaitable[tp.Any]) -> None:
    """Awaits, ignoring a timeout or a closed server (for best-effort waits)."""
    try:
        await awaitable
    except (TimeoutError, asyncio.TimeoutError, ServerClosed):
        pass


async def _print_events(client: DuplexClient, printer: "EventPrinter") -> None:
    async for item in client.stream():
        if isinstance(item, Event):
            printer.on_event(item)
