"""What a session sees of an engine: typed frames out, a small control surface in.

Pipecat-style: an engine emits typed frames (dataclasses below) into the session's sink; the
session turns them into protocol messages. Nothing here knows about Moshi or sockets.
"""

from __future__ import annotations

import abc
import typing as tp
from dataclasses import dataclass

import numpy as np

from ..audio import rms_dbfs
from ..config import keys_for
from ..models.llm.base import TokenUsage, ToolCall, ToolChoice

# the history's call item and the LLM's token counts, re-exported for the layers above (no models import there)
__all__ = ["TokenUsage", "ToolCall", "ToolChoice"]


@dataclass(frozen=True)
class UserFrame:
    """One 80 ms frame of the user's audio, its loudness read once for every stage that needs it
    (the session's latency clock, the duplex interrupt hold, the cascade's end-of-turn detector)."""
    pcm: np.ndarray            # [FRAME_SAMPLES] float32
    level_dbfs: float

    @classmethod
    def of(cls, pcm: np.ndarray) -> "UserFrame":
        return cls(pcm, rms_dbfs(pcm))


@dataclass
class AssistantAudio:
    pcm: np.ndarray            # one 80 ms frame, float32
    turnaround_ms: float | None = None   # duplex: input frame arrival -> this frame ready
    heard: np.ndarray | None = None      # frame-locked: the user frame the model consumed for it (a recording keeps
                                         # the user's track as consumed: a frame dropped from a full queue is not in it)


@dataclass
class AssistantText:
    text: str                  # new text only (a delta of the assistant's text stream)


@dataclass
class AssistantTurnStarted:
    pass


@dataclass
class AssistantTurnEnded:
    interrupted: bool = False
    barge_in: bool = False     # cut by the user's speech (the session announces it with tts_stop)
    stages: dict | None = None  # per-stage times for `metrics` (cascade: `<stage>_ms` of protocol.CASCADE_STAGES)
    usage: TokenUsage | None = None   # cascade: the LLM's tokens for this answer, all its LLM calls summed
    # cascade: {"audio_gaps": n, "audio_gap_ms": ms}: how often the client's audio ran out mid-turn (the TTS fell
    # behind, or the turn waited for a tool's result), and for how long in all
    playout: dict | None = None


@dataclass
class AssistantTurnDone:
    """An answer the engine started (`LLMProcessing`) is over, spoken or not: the cascade sends one per
    assistant turn, after `AssistantTurnEnded` when it spoke. Lets a protocol close a response that never
    produced audio (an empty reply, a turn cut before its first frame, a failure)."""
    interrupted: bool = False
    tool_calls: tuple[ToolCall, ...] = ()   # the turn ended at these calls (`set_tool_wait(False)`): their
                                            # results join with `tool_result`, `respond` goes on
    usage: TokenUsage | None = None         # cascade: as in AssistantTurnEnded


# A tool call inside an assistant turn (cascade): announced as it streams, then ready for the client to run.
@dataclass
class ToolCallStarted:
    """The LLM began a call (Realtime: `response.output_item.added` of a `function_call` item)."""
    call_id: str
    name: str


@dataclass
class ToolCallArguments:
    """The next stretch of a call's arguments, JSON text as it arrives (`response.function_call_arguments.delta`)."""
    call_id: str
    delta: str


@dataclass
class ToolCallReady:
    """A call is complete: the client runs it and answers with `EngineStream.tool_result` (/ws: `tool_call`;
    Realtime: `.arguments.done` and `response.output_item.done`). The turn waits for every call of a response."""
    call: ToolCall


@dataclass(frozen=True)
class ResponseOptions:
    """One answer's overrides of the conversation's settings (Realtime `response.create`); None keeps them."""
    instructions: str | None = None
    tools: list[dict] | None = None
    tool_choice: ToolChoice | None = None


@dataclass
class UserTranscript:
    content: str               # whole segment so far
    start_ms: int
    end_ms: int | None = None  # set when final


@dataclass
class LLMProcessing:
    pass


@dataclass
class StreamReady:
    """The conversation's start-up work is done (a duplex persona is in its slot): it hears and speaks now."""


@dataclass
class EngineFailure:
    code: str                  # a protocol error code
    message: str


EngineFrame = tp.Union[
    AssistantAudio, AssistantText, AssistantTurnStarted, AssistantTurnEnded, AssistantTurnDone,
    UserTranscript, LLMProcessing, EngineFailure, StreamReady, ToolCallStarted, ToolCallArguments, ToolCallReady,
]
Sink = tp.Callable[[EngineFrame], None]


class CapacityError(RuntimeError):
    """Every slot of the engine is taken."""


class Unsupported(RuntimeError):
    """The engine cannot do what was asked (answered as `error` `unsupported`). `key`: the config key refused,
    where one is (the Realtime error's `param`)."""

    code = "unsupported"

    def __init__(self, message: str, key: str | None = None):
        super().__init__(message)
        self.key = key


class BadChoice(Unsupported):
    """A value outside the server's own list (e.g. a voice it does not offer): `error` `bad_message`, naming the
    valid choices."""

    code = "bad_message"


class EngineStream(abc.ABC):
    """One conversation inside an engine. Called on the event loop thread only."""

    @property
    def frames_dropped(self) -> int:
        """User frames this conversation lost to a full queue so far (reported in `metrics`)."""
        return 0

    @property
    def ready(self) -> bool:
        """False while start-up work runs (a persona prompt): frames wait; `StreamReady` comes when it ends."""
        return True

    @property
    def frame_locked(self) -> bool:
        """True: one assistant frame per user frame (duplex), so cut audio becomes silence, not a gap."""
        return True

    @abc.abstractmethod
    def push_audio(self, frame: UserFrame) -> None:
        """One 80 ms frame of user audio."""

    @abc.abstractmethod
    def interrupt(self) -> None:
        """The assistant stops speaking now."""

    @abc.abstractmethod
    def reset(self) -> None:
        """Forget the conversation, keep listening."""

    @abc.abstractmethod
    def configure(self, config: dict) -> None:
        """Apply settings mid-conversation, or raise Unsupported."""

    def text_input(self, text: str) -> None:
        raise Unsupported(f"{self.mode} mode takes no text input")

    # Turn-taking under the client's control (the OpenAI Realtime endpoint); engines that decide their
    # own turns (duplex) keep these defaults.
    def add_user_text(self, text: str) -> None:
        """A user message joins the conversation without being answered (`respond` answers it)."""
        raise Unsupported(f"{self.mode} mode takes no text input")

    def add_message(self, role: str, text: str, key: str, after: list[str] | None = None) -> None:
        """A message (`user`, `system` or `assistant`) joins the conversation's context unanswered, known as
        `key`. `after`: None puts it at the end; else the keys of the messages it follows, nearest first:
        it goes after the first of them the engine knows, or at the start when it knows none (`[]`)."""
        raise Unsupported(f"{self.mode} mode takes no messages into its context")

    def delete_message(self, key: str) -> None:
        """The message known as `key` leaves the conversation's context (one it does not know: nothing)."""
        raise Unsupported(f"{self.mode} mode cannot take anything out of its context")

    def name_reply(self, key: str) -> None:
        """The latest assistant turn's reply (as the context keeps it) is known as `key` from now on."""
        return None

    def respond(self, options: ResponseOptions | None = None) -> None:
        """Answer the conversation as it stands now (with this answer's own instructions or tools)."""
        raise Unsupported(f"{self.mode} mode answers by itself; it takes no request for an answer")

    # Function calling (cascade). Tools and tool choice are config keys (`configure`), per answer `respond`'s.
    def tool_result(self, call_id: str, output: str) -> None:
        """The result of a `ToolCallReady` call. A waiting turn goes on with it; with `set_tool_wait(False)` it
        joins the history for the next `respond`. Raises BadChoice (`bad_message`) for a call id nothing
        waits for (unknown, already answered, or given up after a timeout, interrupt or barge-in)."""
        raise Unsupported(f"{self.mode} mode makes no tool calls")

    def set_tool_wait(self, on: bool) -> None:
        """On (default, /ws): a turn that makes calls waits for their results and answers on by itself. Off
        (Realtime): the turn ends at its calls (`AssistantTurnDone.tool_calls`); results join the history."""
        if not on:
            raise Unsupported(f"{self.mode} mode makes no tool calls")

    def add_tool_call(self, call: ToolCall) -> None:
        """A call the client puts in the history itself (a Realtime client replaying a `function_call` item)."""
        raise Unsupported(f"{self.mode} mode makes no tool calls")

    def set_auto_respond(self, on: bool) -> None:
        """Whether the end of a spoken user turn starts an answer by itself (on by default)."""
        if not on:
            raise Unsupported(f"{self.mode} mode always answers by itself")

    def truncate(self, heard_ms: float) -> None:
        """The user heard only the first `heard_ms` of the latest assistant turn: cut it there if it still
        plays, and keep in the conversation's context only what was heard."""
        raise Unsupported(f"{self.mode} mode cannot take back what the assistant said")

    @abc.abstractmethod
    def close(self) -> None:
        """Leave the engine: its slot and queues are freed at once."""

    @property
    @abc.abstractmethod
    def mode(self) -> str: ...


@dataclass(frozen=True)
class ConfigOffer:
    """What a client may set on one engine (served at `GET /config`, the browser page's settings): the config
    keys `start` takes, those `configure` takes mid-conversation, and the voice names `config.voice` takes."""
    start_keys: frozenset[str]
    configure_keys: frozenset[str]
    voices: tuple[str, ...] = ()
    default_voice: str | None = None


class Engine(abc.ABC):
    name: str

    @abc.abstractmethod
    def open(self, config: dict, sink: Sink) -> EngineStream:
        """Starts a conversation; raises CapacityError when full, Unsupported for a config it cannot take."""

    def check_config(self, config: dict) -> None:
        """Raises Unsupported for a config `open` would refuse, without taking a slot (default: takes any)."""
        return None

    def config_offer(self) -> ConfigOffer:
        """The keys and voices this engine takes (default: every key the schema lists for its name, no voices)."""
        keys = keys_for(self.name)
        return ConfigOffer(keys, keys)

    @abc.abstractmethod
    def has_free_slot(self) -> bool: ...

    @abc.abstractmethod
    def health(self) -> dict: ...

    @abc.abstractmethod
    async def start(self) -> None:
        """Starts the engine's background work (its scheduler's tick loop); called once, with the app."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Stops it and waits for the model threads; called once, when the app shuts down."""
