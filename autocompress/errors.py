"""The one exception root. User errors carry where, what was received and what is allowed."""

from __future__ import annotations

import difflib
import reprlib
from collections.abc import Iterable

EXCERPT = 80  # characters of a bad value an error shows: a 1 MB value is named, never echoed


class AutocompressError(Exception):
    """Root of every error this package raises on purpose."""


class ConfigError(AutocompressError, ValueError):
    """A study file, search space, budget or API argument is not acceptable.

    The message is one line: ``where: field: got X, expected Y``, so the CLI can print it as is.
    ``got`` (and ``field``, which may be a key the user wrote) are shown as a short excerpt:
    a hostile value must not turn one line into megabytes. ``self.got`` keeps the value.
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
        where_text = _cut(where, 2 * EXCERPT)  # a path the user gave may be the bad value
        location = f"{where_text}: {_cut(field)}" if field else where_text
        super().__init__(f"{location}: got {excerpt(got)}, expected {expected}")


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


class _Bounded(reprlib.Repr):
    """``repr`` that stops early: bounded work on nested, huge or self-containing values."""

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel, self.maxstring, self.maxother, self.maxlong = 3, EXCERPT - 2, EXCERPT, 40
        self.maxlist = self.maxtuple = self.maxset = self.maxdict = 8

    def repr_dict(self, x: dict, level: int) -> str:  # insertion order, as the user wrote it
        if not x:
            return "{}"
        if level <= 0:
            return "{...}"
        items = [f"{self.repr1(k, level - 1)}: {self.repr1(v, level - 1)}"
                 for k, v in list(x.items())[:self.maxdict]]
        return "{" + ", ".join(items) + (", ..." if len(x) > self.maxdict else "") + "}"

    def repr_int(self, x: int, level: int) -> str:
        if x.bit_length() > 128:  # repr of a 5000-digit int raises in Python >= 3.11
            return f"<an integer of {x.bit_length()} bits>"
        return super().repr_int(x, level)

    def repr_instance(self, x: object, level: int) -> str:
        try:
            return super().repr_instance(x, level)
        except Exception:  # a user object whose __repr__ fails is still named
            return f"<{type(x).__name__}>"


def _one_line(text: object) -> str:
    text = str(text)
    return " ".join(text.split()) if len(text.splitlines()) > 1 else text


def _cut(text: object, limit: int = EXCERPT) -> str:
    """One line of at most ``limit`` characters, the middle left out (a path keeps its ends)."""
    text = _one_line(text)
    if len(text) <= limit:
        return text
    head = (limit - 3) // 2
    return text[:head] + "..." + text[len(text) - (limit - 3 - head):]


def excerpt(value: object) -> str:
    """``repr(value)`` cut to about :data:`EXCERPT` characters, on one line."""
    return _cut(_Bounded().repr(value))


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """A short suggestion for a misspelt key, or an empty string."""
    if len(word) > EXCERPT:  # no key is that long; difflib would only spend time on it
        return ""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def unknown_key_error(where: str, key: str, allowed: Iterable[str]) -> ConfigError:
    """The standard error for a key a section does not know."""
    allowed = sorted(allowed)
    return ConfigError(
        where, key, key, f"one of {', '.join(allowed)}{did_you_mean(key, allowed)}"
    )


class ExportError(AutocompressError):
    """The rebuilt model does not reproduce the trial, or cannot be written in that format."""
