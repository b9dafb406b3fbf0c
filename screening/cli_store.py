"""Store commands (query, flagged, report): registered on the main CLI by ``register``."""

import typer


def register(app: typer.Typer) -> None:
    """Add the store commands to ``app``."""
