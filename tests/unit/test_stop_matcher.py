from __future__ import annotations

import pytest

from router.tokenizer import StopMatcher


def feed_all(matcher: StopMatcher, pieces: list[str]) -> tuple[str, bool]:
    out = []
    for piece in pieces:
        text, stop = matcher.feed(piece)
        out.append(text)
        if stop is not None:
            return "".join(out), True
    return "".join(out) + matcher.flush(), False


def test_no_stops_passes_text_through_immediately() -> None:
    m = StopMatcher([])
    assert m.feed("abc") == ("abc", None)


@pytest.mark.parametrize("pieces", [["Hello END world"], ["Hello E", "N", "D world"], ["Hello ", "EN", "Dx"]])
def test_stop_string_split_across_pieces_is_cut(pieces: list[str]) -> None:
    assert feed_all(StopMatcher(["END"]), pieces) == ("Hello ", True)


def test_partial_stop_prefix_is_held_then_released() -> None:
    m = StopMatcher(["STOP"])
    assert m.feed("abcST") == ("abc", None)  # "ST" might start "STOP"
    assert m.feed("O") == ("", None)
    assert m.feed("x") == ("STOx", None)  # not a stop after all
    assert m.feed("S") == ("", None)
    assert m.flush() == "S"


def test_earliest_of_several_stops_wins() -> None:
    assert feed_all(StopMatcher(["b", "zz"]), ["a zz b"]) == ("a ", True)


def test_of_overlapping_stops_the_one_that_ends_first_wins() -> None:
    """vLLM's check_stop_strings: "b" ends before "abc" does, though "abc" starts first."""
    m = StopMatcher(["abc", "b"])
    assert m.feed("xabc") == ("xa", "b")


def test_unarmed_text_matches_nothing_but_a_held_tail_completes_once_armed() -> None:
    """min_tokens: a stop string inside the first min_tokens tokens' text is plain text; one
    that ends after them stops, even if it began before (vLLM's detokenizer)."""
    m = StopMatcher(["END"])
    assert m.feed("an END, E", armed=False) == ("an END, ", None)  # "E" is held: it may start END
    assert m.feed("ND", armed=True) == ("", "END")
