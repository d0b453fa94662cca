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


# One module per command; each defines `register(app)`. A module that does not exist yet is skipped.
_COMMAND_MODULES = ["generate", "evaluate", "sample_benchmark", "train_default", "sweep", "info"]
for _name in _COMMAND_MODULES:
    try:
        _mod = importlib.import_module(f"flowcache_cli.{_name}")
    except ModuleNotFoundError as _e:
        if _e.name != f"flowcache_cli.{_name}":
            raise
        continue
    _mod.register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
