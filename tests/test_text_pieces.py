"""Text ids -> text per slot with the tiny J-Moshi's Japanese tokenizer (byte fallback): characters the
tokenizer has no piece for come as UTF-8 byte pieces and are shown whole, never as `<0xE9>`."""

from __future__ import annotations

import sentencepiece as spm

from duplex.models.spec import resolve_checkpoint
from duplex.models.text_pieces import TextPieces


def tokenizer() -> spm.SentencePieceProcessor:
    return resolve_checkpoint("tiny:jmoshi").get_text_tokenizer()


def said(pieces: TextPieces, slot: int, ids: list[int]) -> list[str | None]:
    return [pieces.text(slot, i) for i in ids]


def test_byte_pieces_make_whole_characters_per_slot() -> None:
    tok = tokenizer()
    snow, trains = tok.encode("雪が降る"), tok.encode("電車で行きます")
    assert any(tok.is_byte(i) for i in snow), "the test needs characters outside the tiny vocabulary"
    assert not any(tok.is_byte(i) for i in trains)
    pieces = TextPieces(tok, 2)
    out: dict[int, list[str | None]] = {0: [], 1: []}
    for k in range(max(len(snow), len(trains))):          # two slots interleaved, as in a batched step
        if k < len(snow):
            out[0].append(pieces.text(0, snow[k]))
        if k < len(trains):
            out[1].append(pieces.text(1, trains[k]))
    assert "".join(p for p in out[0] if p).strip() == "雪が降る"
    assert "".join(p for p in out[1] if p).strip() == "電車で行きます"
    assert None in out[0]                                  # the first bytes of a character show nothing yet
    assert all("<0x" not in p for p in out[0] if p)


def test_a_cut_byte_run_is_one_replacement_and_reset_drops_it() -> None:
    tok = tokenizer()
    snow = [i for i in tok.encode("雪") if tok.is_byte(i)]    # three bytes
    word = tok.piece_to_id("はい")
    pieces = TextPieces(tok, 1)
    assert said(pieces, 0, snow[:2] + [word]) == [None, None, "\ufffdはい"]
    assert said(pieces, 0, snow[:2]) == [None, None]
    pieces.reset(0)                                         # a reset starts the slot's text afresh
    assert said(pieces, 0, [word]) == ["はい"]
    assert said(pieces, 0, [0, 1, 2, 3, 10 ** 6]) == [None] * 5    # control ids and ids past the vocabulary
