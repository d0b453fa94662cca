"""The `flowcache` Typer app. Each command lives in its own module; `make_app` assembles them."""
from __future__ import annotations

import typer

from flowcache_cli import evaluate, generate, sample_benchmark, sweep


def make_app() -> typer.Typer:
    """The app, with the flags of the families and cache policies registered at the time it is built."""
    app = typer.Typer(
        name="flowcache",
        help="Caching and KV compression for autoregressive video diffusion: make it fast, measure what it costs.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )

    @app.callback()
    def _root() -> None:
        """flowcache: make autoregressive video diffusion fast by caching, and measure what it costs."""

    for command in (generate, evaluate, sweep, sample_benchmark):
        command.register(app)
    return app


app = make_app()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
