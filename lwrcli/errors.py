"""User-facing errors: one clear paragraph on stderr and exit status 2, never a traceback."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """Bad input from the user (flags, config, data, checkpoint). The CLI prints it and exits 2."""


def closest(name: str, candidates: Iterable[str]) -> str | None:
    """The closest valid name to a mistyped one, for 'did you mean' hints."""
    matches = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.5)
    return matches[0] if matches else None


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """' Did you mean X?' or '' when nothing is close."""
    guess = closest(name, candidates)
    return f" Did you mean '{guess}'?" if guess else ""
