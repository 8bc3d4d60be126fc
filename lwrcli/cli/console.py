"""The two consoles every command prints through: results on stdout, messages on stderr.
No rich markup, so a path or an error text with brackets prints as it is."""

from __future__ import annotations

import sys

from rich.console import Console

out_console = Console(markup=False)
err_console = Console(stderr=True, markup=False)


def fail(message: str, code: int = 2) -> None:
    """One paragraph on stderr, then exit with `code` (2: the user's input was wrong)."""
    err_console.print(f"error: {message}", highlight=False, soft_wrap=True)
    sys.exit(code)
