"""`session.update` on `/v1/realtime`: instructions, voice, transcription, turn detection, engine switch
(docs/realtime.md). The fields are read by `events.parse_session_update`; what they mean here is this."""

from __future__ import annotations

import typing as tp

from ....config import default_of
from ....engines.base import BadChoice, Unsupported
from . import events as rt
from .core import RealtimeBase


class SessionSettings(RealtimeBase):
    # --- session.update --------------------------------------------------------------------------
    def _on_session_update(self, body: dict) -> None:
        update = rt.parse_session_update(body.get("session"), (*[m for m in self.engines], "auto"))
        for param, code, message in update.refused:
            self.send_error(code, message, param)
        changes = update.changes
        if "model" in changes and changes["model"] not in ("auto", self.config.model):
            self._switch_engine(changes["model"])
        persona = {k: changes[k] for k in ("instructions", "voice") if k in changes and changes[k] != getattr(self.config, k)}
        if persona and self.config.model == "duplex":
            self._set_duplex_persona(persona)
            persona = {}
        if "instructions" in persona:
            prompt = changes["instructions"] or default_of("system_prompt")   # "": the server's default prompt
            if self._configure("session.instructions", system_prompt=prompt):
                self.config.instructions = changes["instructions"]
        if "voice" in persona:
            try:
                self._stream().configure({"voice": changes["voice"]})
                self.config.voice = changes["voice"]
            except BadChoice as exc:
                if changes["voice"] not in rt.OPENAI_VOICES:   # alloy, marin, …: the voice stays as it is, as shown
                    self.send_error(exc.code, str(exc), "session.audio.output.voice")
            except Unsupported as exc:
                self.send_error(exc.code, str(exc), "session.audio.output.voice")
        if "tools" in changes or "tool_choice" in changes:
            self._set_tools(changes)
        if "transcription" in changes:
            on = changes["transcription"] is not None
            if self.config.model == "cascade" or self._configure("session.audio.input.transcription",
                                                                 transcribe_user=on):
                self.config.transcription = changes["transcription"]
        if "turn_detection" in changes:
            detection = changes["turn_detection"]
            try:
                self._stream().set_auto_respond(detection is not None and detection["create_response"])
                self.config.turn_detection = detection
            except Unsupported as exc:
                self.send_error("unsupported", str(exc), "session.audio.input.turn_detection")
        self.emit("session.updated", session=self.config.wire(self.session_id))

    def _configure(self, param: str, **config: tp.Any) -> bool:
        config = {k: v for k, v in config.items() if v is not None}
        try:
            self._stream().configure(config)
            return True
        except Unsupported as exc:
            self.send_error(exc.code, str(exc), param)
            return False

    def _set_duplex_persona(self, changes: dict) -> None:
        """Duplex: `instructions` and `voice` are the model's persona (PersonaPlex's role and voice prompts),
        which go in before a conversation starts, so the conversation restarts with them (what was said so
        far is lost). Every other setting of the session (user transcription) holds in the new conversation.
        A model without persona support, or an unknown voice: `error` `unsupported`, and the conversation
        goes on as it was."""
        def persona(instructions: str, voice: str | None) -> dict:
            config: dict[str, tp.Any] = {k: v for k, v in (("system_prompt", instructions), ("voice", voice)) if v}
            if self.config.transcription is not None:
                config["transcribe_user"] = True
            return config
        old = persona(self.config.instructions, self.config.voice)
        instructions = changes.get("instructions", self.config.instructions)
        voice = changes.get("voice", self.config.voice)
        new = persona(instructions, voice)
        try:
            self.engines["duplex"].check_config(new)
        except Unsupported as exc:
            if changes.get("voice") in rt.OPENAI_VOICES:   # alloy, marin, …: the voice stays as it is, as shown
                rest = {k: v for k, v in changes.items() if k != "voice"}
                return self._set_duplex_persona(rest) if rest else None
            param = ("session.audio.output.voice" if exc.key == "voice" or "instructions" not in changes
                     else "session.instructions")
            return self.send_error("unsupported", str(exc), param)
        self._restart("duplex", new)
        if self.conversation is None:   # refused (capacity): back to the previous persona
            self._on_start({"mode": "duplex", "config": old})
            return
        self.config.instructions, self.config.voice = instructions, voice

    def _restart(self, mode: str, config: dict) -> None:
        """The conversation ends (a response under way is cancelled) and a new one starts on `mode`."""
        self.queued = None
        if self.response is not None:
            self._cancel_response("client_cancelled")
        self._end_conversation()
        self._on_start({"mode": mode, "config": config})

    def _switch_engine(self, mode: str) -> None:
        """`session.update` with another `model`: the conversation restarts on that engine (history lost)."""
        previous = self.config.model
        self._restart(mode, {})
        if self.conversation is None:   # refused (capacity): back to the previous engine
            self._on_start({"mode": previous, "config": {}})
        assert self.conversation is not None
        self.config = fresh_config(self.conversation.mode)
        self.buffer_item, self.buffer_ms, self.transcript_item, self.partial = None, 0, None, ""


def fresh_config(mode: str) -> rt.RealtimeConfig:
    """A new conversation's session as the client sees it (the cascade's default system prompt shown)."""
    return rt.RealtimeConfig(mode, instructions=default_of("system_prompt") if mode == "cascade" else "")
