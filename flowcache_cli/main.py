"""The `flowcache` Typer app. Each command lives in its own module and registers itself here."""
from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    name="flowcache",
    help="Chunk-wise caching and KV compression for autoregressive video diffusion (MAGI-1 architecture).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)



@app.callback()
def _root() -> None:
    """flowcache: make autoregressive video diffusion fast by caching, and measure what it costs."""


# One module per command; each defines `register(app)`.
for _name in ["generate", "evaluate", "sweep", "sample_benchmark"]:
    importlib.import_module(f"flowcache_cli.{_name}").register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
