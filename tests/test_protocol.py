"""Serial tests of a worker's error report (runtime.protocol): its layout and bounds."""

from __future__ import annotations

import pytest

from cocoi_mpi.runtime.protocol import (
    ERROR_BYTES,
    SUMMARY_BYTES,
    TRACEBACK_BYTES,
    TRACEBACK_LINES,
    bounded_tail,
    error_report,
    split_report,
)


def caught(fn) -> BaseException:
    """The exception ``fn`` raises, with its traceback, as a worker's handler sees it."""
    with pytest.raises(BaseException) as info:
        fn()
    return info.value


def boom() -> None:
    raise ValueError("boom")


def test_report_is_one_line_then_the_indented_stack():
    text = error_report("worker rank 3, layer 1, round 7: ValueError: boom", caught(boom), 3, "n1")
    lines = text.splitlines()
    assert lines[0] == "worker rank 3, layer 1, round 7: ValueError: boom"
    assert lines[1] == "  worker rank 3 on host n1 (most recent call last):"
    assert all(line.startswith("  ") for line in lines[1:])
    assert any("in boom" in line for line in lines) and lines[-1] == "  ValueError: boom"
    assert "Traceback" not in text  # the word is left to local, uncaught errors


def test_split_report_gives_the_stack_unindented():
    text = error_report("what", caught(boom), 2, "h")
    summary, stack = split_report(text)
    assert summary == "what"
    assert stack.startswith("worker rank 2 on host h (most recent call last):\n  File ")
    assert stack.endswith("\nValueError: boom")
    assert split_report("an old one-line report") == ("an old one-line report", "")


def test_chained_exceptions_keep_both_stacks_without_the_word():
    def chained() -> None:
        try:
            boom()
        except ValueError as exc:
            raise RuntimeError("while handling") from exc

    text = error_report("x", caught(chained), 1, "h")
    assert "Traceback" not in text
    assert "ValueError: boom" in text and text.endswith("RuntimeError: while handling")
    assert text.count("(most recent call last):") == 2


def test_bounded_tail_keeps_the_last_lines_and_says_what_was_cut():
    lines = [f"line {i}" for i in range(100)]
    kept = bounded_tail(lines, 40, 10_000)
    assert kept[0] == "... 60 earlier lines cut" and kept[1:] == lines[60:]
    assert bounded_tail(lines[:5], 40, 10_000) == lines[:5]
    hundred = ["x" * 99] * 30  # 100 bytes each with its newline
    assert bounded_tail(hundred, 40, 1000) == ["... 20 earlier lines cut", *hundred[:10]]


def test_a_huge_line_is_clipped_not_dropped():
    kept = bounded_tail(["frame", "ValueError: " + "é" * 50_000], 40, 8192)
    assert kept[-1].startswith("ValueError: é") and kept[-1].endswith("...")
    assert len(kept[-1].encode()) <= 8192 // 8 and kept[0] == "frame"


def test_a_deep_stack_and_a_huge_message_fit_the_master_buffer():
    def ping(n: int) -> None:  # two functions in turn: Python folds a repeated frame
        if n == 0:
            raise ValueError("end\n" + "y" * 100_000)
        pong(n - 1)

    def pong(n: int) -> None:
        ping(n)

    exc = caught(lambda: ping(200))
    text = error_report(f"worker rank 1: {exc!r}", exc, 1, "h" * 255)
    summary, stack = split_report(text)
    assert "\n" not in summary and len(summary.encode()) <= SUMMARY_BYTES
    assert len(text.encode()) < ERROR_BYTES
    body = stack.splitlines()[2:]  # after the header and the "... cut" line
    assert len(body) <= TRACEBACK_LINES and len("\n".join(body).encode()) <= TRACEBACK_BYTES
    assert stack.splitlines()[1].endswith("earlier lines cut")
    assert "in ping" in stack and body[-1].startswith("y")  # the message's tail line
