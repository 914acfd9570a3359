"""ganinvert: embed images, especially out-of-distribution ones, into a pretrained StyleGAN2.

>>> import ganinvert
>>> G = ganinvert.load_generator("default")            # doctest: +SKIP
>>> result = ganinvert.invert(G, image, "sphinx")      # doctest: +SKIP
"""

from .version import __version__  # noqa: E402

from .errors import GanInvertError  # noqa: E402
from .models.loading import load_generator  # noqa: E402


def __getattr__(name: str):
    # The engine imports LPIPS/metrics lazily so `import ganinvert` stays light.
    if name in ("invert", "InversionResult"):
        from . import inversion
        return getattr(inversion, name)
    raise AttributeError(name)


__all__ = ["GanInvertError", "InversionResult", "__version__", "invert", "load_generator"]
