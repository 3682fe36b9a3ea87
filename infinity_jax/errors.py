"""Bad input that the command line reports in one line (`infinity-jax <command>: error: ...`, exit
status 2) instead of a traceback; see cli.main. Library callers get ordinary exceptions."""
from __future__ import annotations


class UsageError(ValueError):
    """A bad command line (missing file, bad template, empty prompt): printed, exit status 2."""
