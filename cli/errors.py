"""How every plmscreen command reports an error: one line on stderr, then the exit code."""

from __future__ import annotations

import typer
from plmscreen.screening.errors import EXIT_BAD_INPUT


def fail(message: str, code: int = EXIT_BAD_INPUT) -> None:
    typer.echo(f"plmscreen: error: {message}", err=True)
    raise typer.Exit(code)
