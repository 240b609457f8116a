"""Streamed text: stop sequences and held-back tails."""

from __future__ import annotations

from tessera.router.text import TextStream


class Chars:
    """A toy tokenizer: token i is chr(i); 0xFFFD stands for an incomplete character."""

    def decode(self, ids):
        return "".join(chr(i) for i in ids)


def feed(stream, text):
    return [stream.add(ord(ch)) for ch in text]


def test_stop_sequence_cuts_the_text_and_nothing_of_it_is_streamed():
    s = TextStream(Chars(), ["END"])
    deltas = feed(s, "abcENDxyz")
    assert "".join(deltas) == "abc"
    assert s.stopped and s.finish() == ""


def test_possible_stop_prefix_is_held_back_then_released():
    s = TextStream(Chars(), ["\n\n"])
    assert feed(s, "ab\n") == ["a", "b", ""]
    assert s.add(ord("c")) == "\nc"
    assert not s.stopped
    assert s.finish() == ""


def test_incomplete_character_waits_for_the_next_token():
    s = TextStream(Chars(), [])
    assert s.add(0xFFFD) == ""
    assert s.finish() == "\ufffd"
