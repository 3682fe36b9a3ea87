"""Bad input that the command line reports in one line (`infinity-jax <command>: error: ...`, exit
status 2) instead of a traceback; see infinity_jax.commands. Library callers get ordinary exceptions."""

from __future__ import annotations


class UsageError(ValueError):
    """A bad command line (missing file, bad template, empty prompt): printed, exit status 2."""


def one_line(e: BaseException) -> str:
    """An exception's message as one line, for the command line: a state-dict mismatch as its summary
    (torch_io.StateDictMismatch.brief), any other message with its line breaks folded."""
    if callable(getattr(e, "brief", None)):
        return e.brief()
    msg = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)  # KeyError's str() quotes
    return "; ".join(line.strip() for line in msg.splitlines() if line.strip()) or type(e).__name__
