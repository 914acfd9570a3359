"""Seeded random streams: every draw of the measurement models comes from a named stream of a user seed.

One user seed (``--seed``) feeds several independent random streams: the noise of a
compressed-sensing measurement is independent of its random matrix even though both come from
the same seed, and a mask drawn from seed 0 is not correlated with the noise of seed 0.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np
import torch

from .checks import check_seed


class RandomStream(IntEnum):
    """Independent random streams derived from one user seed (see :func:`seeded_generator`)."""

    MEASUREMENT_NOISE = 0
    COMPRESSED_SENSING = 1
    BOX_MASK = 2
    RANDOM_MASK = 3


def seeded_generator(seed: int, stream: RandomStream) -> torch.Generator:
    """A CPU ``torch.Generator`` for one ``stream`` of the user's ``seed``.

    The generator's seed is derived with numpy's ``SeedSequence`` (``seed`` as entropy, the
    stream as spawn key), which gives statistically independent streams for the same ``seed``.
    Draws are made on the CPU so that a seed yields the same numbers on every device.

    >>> a = torch.rand(2, generator=seeded_generator(0, RandomStream.BOX_MASK))
    >>> b = torch.rand(2, generator=seeded_generator(0, RandomStream.BOX_MASK))
    >>> bool(torch.equal(a, b))
    True
    """
    sequence = np.random.SeedSequence(entropy=check_seed(seed), spawn_key=(int(stream),))
    derived = int(sequence.generate_state(1, dtype=np.uint64)[0]) >> 1  # fits torch's int64 seed
    return torch.Generator(device="cpu").manual_seed(derived)
