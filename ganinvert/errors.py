"""User-facing errors.

Every error a user can cause (bad file, wrong shape, unknown method, …) is a
:class:`GanInvertError`. Its message is one line that names the problem; the CLI prints it
and exits with status 2 instead of showing a traceback.
"""

from __future__ import annotations


class GanInvertError(ValueError):
    """A problem with the user's input, reported as one line."""


class CheckpointError(GanInvertError):
    """A checkpoint file that cannot be read or is of an unsupported kind."""


class ImageError(GanInvertError):
    """An image file that cannot be read or used."""


class WeightsNotFoundError(GanInvertError):
    """A weights file (e.g. LPIPS) that is not where it was looked for."""
