"""Printing tables whole when the output is not a terminal.

Rich renders at the terminal's width, and at 80 columns when the output is a pipe, a log
file or CI: a table of workers then folds `llama-8b-0@local` into `llama-8b-0@lo` / `cal`
and a long line wraps, which nobody can grep or copy. Off a terminal nobody reads at a
width, so a table is printed as wide as its widest row needs. On a terminal it keeps the
terminal's width (folding there is what the person at it wants), unless `at_least` asks
for more (a URL cut in two is worse than a line the terminal wraps).
"""

from __future__ import annotations

from rich.console import Console, RenderableType
from rich.measure import Measurement

UNBOUNDED = 100_000
"""The width a renderable is measured in when nothing bounds it."""


def natural_width(console: Console, renderable: RenderableType) -> int:
    """The columns `renderable` takes when nothing makes it fold or wrap."""
    options = console.options.update_width(UNBOUNDED)
    return Measurement.get(console, options, renderable).maximum


def print_whole(console: Console, renderable: RenderableType, at_least: int = 0) -> None:
    """Print `renderable` on `console`: whole lines off a terminal (see the module)."""
    needed = max(at_least, 0 if console.is_terminal else natural_width(console, renderable))
    if needed <= console.width:
        console.print(renderable)
        return
    wide = Console(
        file=console.file, width=needed, highlight=False,
        color_system="auto" if console.is_terminal else None, force_terminal=console.is_terminal,
    )
    wide.print(renderable)
