"""The one exception root. User errors carry where, what was received and what is allowed."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class AutocompressError(Exception):
    """Root of every error this package raises on purpose."""


class ConfigError(AutocompressError, ValueError):
    """A study file, search space, budget or API argument is not acceptable.

    The message is one line: ``where: field: got X, expected Y``, so the CLI can print it as is.
    """

    def __init__(
        self,
        where: str,
        field: str | None,
        got: object,
        expected: str,
    ) -> None:
        self.where = where
        self.field = field
        self.got = got
        self.expected = expected
        location = f"{where}: {field}" if field else where
        super().__init__(f"{location}: got {got!r}, expected {expected}")


class SearchStopped(AutocompressError):
    """A search ended before its trials were done; what finished is saved. ``exit_code`` for
    the CLI: 130 after Ctrl-C, 1 when too many trials failed."""

    exit_code = 1


class Interrupted(SearchStopped):
    exit_code = 130


class TooManyFailures(SearchStopped):
    """More than half of a study's first trials failed: something is wrong, not unlucky."""


class TrialError(AutocompressError):
    """A trial failed for a reason worth recording (bad numbers, a broken model)."""


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """A short suggestion for a misspelt key, or an empty string."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def unknown_key_error(where: str, key: str, allowed: Iterable[str]) -> ConfigError:
    """The standard error for a key a section does not know."""
    allowed = sorted(allowed)
    return ConfigError(
        where, key, key, f"one of {', '.join(allowed)}{did_you_mean(key, allowed)}"
    )
