"""Cutting the server's side of a `ws://` stream into WebSocket messages, on the TCP relay (RFC 6455 framing).

The stream opens with the HTTP upgrade's response (skipped to its blank line). The server's frames are not
masked and `ws://` is not encrypted, so the relay can tell where each message ends and when that last byte
reached it: the time the server sent the message. Fragmented messages
(continuation frames) end at their FIN frame; control frames (ping, pong, close) are skipped.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class MessageCutter:
    """Feed the server-to-client bytes in order with when each chunk was read; `messages` collects
    (opcode, first payload byte or -1, when the message's last byte was read)."""

    messages: list[tuple[int, int, float]] = field(default_factory=list)
    _buffer: bytearray = field(default_factory=bytearray)
    _opcode: int = 0        # of the message being assembled (its first frame's)
    _first: int = -1        # its first payload byte
    _upgraded: bool = False  # past the HTTP response

    def feed(self, data: bytes, at: float) -> None:
        self._buffer += data
        if not self._upgraded:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            del self._buffer[:end + 4]
            self._upgraded = True
        while (frame := self._next_frame()) is not None:
            fin, opcode, payload = frame
            if opcode >= 0x8:           # a control frame, between a message's fragments or not
                continue
            if opcode != 0x0:           # the first frame of a message
                self._opcode, self._first = opcode, payload[0] if payload else -1
            elif self._first < 0 and payload:
                self._first = payload[0]
            if fin:
                self.messages.append((self._opcode, self._first, at))
                self._first = -1

    def _next_frame(self) -> tuple[bool, int, bytes] | None:
        buf = self._buffer
        if len(buf) < 2:
            return None
        length, offset = buf[1] & 0x7F, 2
        if length == 126:
            if len(buf) < 4:
                return None
            length, offset = int.from_bytes(buf[2:4], "big"), 4
        elif length == 127:
            if len(buf) < 10:
                return None
            length, offset = int.from_bytes(buf[2:10], "big"), 10
        if buf[1] & 0x80:                # masked (a client's frame): the key comes first
            offset += 4
        if len(buf) < offset + length:
            return None
        fin, opcode = bool(buf[0] & 0x80), buf[0] & 0x0F
        payload = bytes(buf[offset:offset + length])
        del buf[:offset + length]
        return fin, opcode, payload
