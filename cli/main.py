"""The `seg3d` command. Each sub-command lives in its own module and only parses, calls seg3d, prints."""
from __future__ import annotations

import importlib

import typer
from seg3d.cli.common import set_debug, setup_logging

app = typer.Typer(
    name="seg3d",
    help="Self-configuring 3D medical image segmentation: check, plan, train, predict, evaluate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Modules that add commands with ``register(app)``; imported at start, so they keep heavy imports inside
# their command functions (``seg3d --help`` stays fast).
COMMAND_MODULES = ("check", "plan", "train", "predict", "evaluate", "demo", "download")


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks for errors.")) -> None:
    set_debug(debug)
    setup_logging()


for _name in COMMAND_MODULES:
    importlib.import_module(f"seg3d.cli.{_name}").register(app)


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
