"""Only user errors become one line: a ValueError from a bug keeps its traceback."""

from __future__ import annotations

from argparse import ArgumentError

import pytest

from set_lightning.errors import UserError, run_with_clean_errors


def _raise(err: BaseException):
    def fn():
        raise err

    return fn


def test_a_user_error_is_one_line_and_exit_code_1(capsys):
    assert run_with_clean_errors(_raise(UserError("data.history must be in 1..31,\n got 40"))) == 1
    assert capsys.readouterr().err == "error: data.history must be in 1..31, got 40\n"
    assert run_with_clean_errors(_raise(ArgumentError(None, "unrecognized arguments: --x"))) == 1
    assert "see --help" in capsys.readouterr().err
    assert run_with_clean_errors(lambda: None) == 0


def test_a_user_error_wrapped_by_a_library_is_found(capsys):
    try:
        try:
            raise UserError("lr must be a positive finite number, got -1")
        except UserError as inner:
            raise RuntimeError("Problem with given class_path") from inner
    except RuntimeError as outer:
        wrapped = outer
    assert run_with_clean_errors(_raise(wrapped)) == 1
    assert capsys.readouterr().err.strip() == "error: lr must be a positive finite number, got -1"


def test_a_value_error_from_a_bug_keeps_its_traceback(capsys):
    with pytest.raises(ValueError, match="operands could not be broadcast"):
        run_with_clean_errors(_raise(ValueError("operands could not be broadcast")))
    with pytest.raises(KeyError):
        run_with_clean_errors(_raise(KeyError("x")))
    assert capsys.readouterr().err == ""


def test_hint_is_applied_to_the_message(capsys):
    assert run_with_clean_errors(_raise(UserError("bad")), hint=lambda t: t + " (hint)") == 1
    assert capsys.readouterr().err == "error: bad (hint)\n"
