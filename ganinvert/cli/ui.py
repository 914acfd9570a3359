"""``ganinvert ui``: the browser app (optional extra ``pip install -e ".[ui]"``)."""

from __future__ import annotations

import click

from ..errors import GanInvertError
from .common import generator_option, lpips_options

LOOPBACK = ("127.0.0.1", "localhost", "::1")


@click.command("ui")
@generator_option
@click.option("--port", type=click.IntRange(1, 65535), default=7860, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to serve on; anything but loopback lets other machines run jobs here.")
@lpips_options
def ui_command(generator: str, port: int, host: str, lpips_weights: str | None, no_lpips: bool) -> None:
    """Serve the app (invert, edit, restore, SPHInX draws) as a local web page."""
    try:
        from ..ui.app import serve
    except ImportError as exc:
        raise GanInvertError(f"ganinvert ui needs the 'ui' extra ({exc.name} is missing): "
                             "pip install -e \".[ui]\"") from None
    from ..ui.handlers import Workspace

    if host not in LOOPBACK:
        click.echo(f"ganinvert: warning: serving on {host}, not only this machine: anyone who can reach it can "
                   "run jobs and download results", err=True)
    workspace = Workspace.open(generator, lpips_weights, no_lpips)
    try:
        serve(workspace, host, port)
    except OSError:
        raise GanInvertError(f"cannot serve on {host}:{port}: the port is in use or the address is not this "
                             "machine's; choose another --port or --host") from None
    finally:
        workspace.close()


COMMANDS = {"ui": ui_command}
