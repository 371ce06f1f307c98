"""Text token ids -> the text each slot says, with SentencePiece byte fallback.

A tokenizer trained with byte fallback (J-Moshi's Japanese one) spells a character it has no piece for
as its UTF-8 bytes, one piece each (`<0xE9>` `<0x9B>` `<0xAA>` for "雪"). Those pieces are held per slot
until they make whole characters, so the text stream never shows `<0xE9>` nor half a character; a byte
run cut short (a random model's) comes out as U+FFFD. Control ids (unk, bos, eos, pad) are never shown.
"""

from __future__ import annotations

import codecs
import re
import typing as tp

SPECIAL_TEXT_IDS = frozenset({0, 1, 2, 3})
_BYTE_PIECE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


class Tokenizer(tp.Protocol):
    def vocab_size(self) -> int: ...
    def id_to_piece(self, token: int) -> str: ...
    def is_byte(self, token: int) -> bool: ...


class TextPieces:
    def __init__(self, tokenizer: Tokenizer, slots: int):
        # per id: the text of a piece (None for control ids), or the byte a byte piece stands for
        self.pieces: list[str | int | None] = [_piece(tokenizer, i) for i in range(tokenizer.vocab_size())]
        self.decoders = [codecs.getincrementaldecoder("utf-8")("replace") for _ in range(slots)]

    def __len__(self) -> int:
        return len(self.pieces)

    def text(self, slot: int, token: int) -> str | None:
        """What `slot` says with `token` (None: nothing to show yet)."""
        piece = self.pieces[token] if 0 <= token < len(self.pieces) else None
        decoder = self.decoders[slot]
        if isinstance(piece, int):
            return decoder.decode(bytes([piece])) or None
        if piece is None:
            return None
        held = decoder.decode(b"", final=True)     # a byte run cut short by a whole piece
        decoder.reset()
        return held + piece

    def reset(self, slot: int) -> None:
        self.decoders[slot].reset()


def _piece(tokenizer: Tokenizer, token: int) -> str | int | None:
    if token in SPECIAL_TEXT_IDS:
        return None
    piece = tokenizer.id_to_piece(token)
    match = _BYTE_PIECE.match(piece) if tokenizer.is_byte(token) else None
    if match is not None:
        return int(match.group(1), 16)
    return piece.replace("\u2581", " ")
