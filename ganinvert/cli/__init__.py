"""The ``ganinvert`` command line: parse, validate, call the library, write outputs atomically.

One module per command family (:mod:`.invert`, :mod:`.tasks`, :mod:`.evaluate`, :mod:`.train`,
:mod:`.train_inverter`), each exporting its ``COMMANDS``; the options, set-up helpers and error
mapping they share live in :mod:`.common`. Every user error (a
:class:`~ganinvert.errors.GanInvertError` or a bad option) is printed as one line on stderr with
exit status 2; there are no tracebacks for known problems.
"""

from __future__ import annotations

from typing import Sequence

import click

from . import align, demo, evaluate, invert, reproduce, tasks, train, train_inverter, ui
from .common import run

COMMAND_MODULES = (invert, demo, tasks, evaluate, reproduce, train, train_inverter, align, ui)


@click.group()
@click.version_option(package_name="ganinvert")
def cli() -> None:
    """Invert images into a pretrained StyleGAN2 (SPHInX and baselines), then restore and edit them."""


for _module in COMMAND_MODULES:
    for _name, _command in _module.COMMANDS.items():
        cli.add_command(_command, _name)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: run the CLI, turning known errors into one stderr line and exit status 2."""
    return run(cli, argv)
