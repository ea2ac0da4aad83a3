"""Stop-string helpers shared by the backends."""

from __future__ import annotations

import pytest

from procmem.llm._stops import cut_at_stop, filter_stream, find_stop


def test_the_earliest_stop_string_wins() -> None:
    assert find_stop("a.b\nc", ["\n", "."]) == 1
    assert find_stop("abc", ["x", ""]) is None
    assert cut_at_stop("12\n34", ["\n"]) == ("12", True)
    assert cut_at_stop("1234", ["\n"]) == ("1234", False)


@pytest.mark.parametrize(("pieces", "stops", "expected"), [
    (["Hel", "lo", " wor", "ld"], [], "Hello world"),
    (["ans", "wer\nnext"], ["\n"], "answer"),
    (["a", "b", "E", "N", "D", "z"], ["END"], "ab"),  # a stop split over pieces
    (["a", "E", "N", "x", "y"], ["END"], "aENxy"),  # a prefix of a stop that does not complete
    (["x", "EN"], ["END"], "xEN"),  # a held-back tail is released at the end
    (["\n"], ["\n"], ""),
])
def test_a_filtered_stream_concatenates_to_the_text_cut_at_the_first_stop(
        pieces: list[str], stops: list[str], expected: str) -> None:
    out = list(filter_stream(iter(pieces), stops))
    assert "".join(out) == expected == cut_at_stop("".join(pieces), stops)[0]
    assert all(out)


def test_a_filtered_stream_stops_consuming_at_the_stop() -> None:
    consumed: list[str] = []

    def pieces():  # type: ignore[no-untyped-def]
        for p in ["one", "\n", "two", "three"]:
            consumed.append(p)
            yield p

    assert "".join(filter_stream(pieces(), ["\n"])) == "one"
    assert consumed == ["one", "\n"]
