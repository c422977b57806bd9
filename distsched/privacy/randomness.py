"""Where DP randomness comes from: a secret, per-process seed by default, a config seed only on request.

The noise of DP-SGD and the Poisson sampling are the mechanism: an attacker who knows their seed can
subtract the noise from a released gradient. By default both are seeded from ``os.urandom`` (the OS's
cryptographically strong source), once per process, and the seed is never written anywhere (not in
``config.yaml``, the logs or a checkpoint); Opacus' ``secure_mode`` noise (the sum of four Gaussian draws,
robust to floating-point attacks; Holohan & Braghin 2021) is on. Opacus' own ``secure_mode`` generator
needs ``torchcsprng``, which has no build for the installed torch; ``torch.Generator`` seeded from 64
secret bits is what we use instead. A resumed secure run draws fresh secret randomness.

``reproducible=True`` derives both from the config's seed instead (bit-identical reruns and resumes):
such a run is **not private** against anyone who can read the config, and says so.
"""

from __future__ import annotations

import os

import torch

NOT_PRIVATE = ("privacy.reproducible: true: the DP noise and the Poisson batches are derived from the "
               "config's seed, so this run is NOT private (for tests and debugging only)")


def secret_seed() -> int:
    """A 63-bit seed from ``os.urandom``; callers keep it in memory only."""
    return int.from_bytes(os.urandom(8), "little") >> 1


def noise_generator(device: torch.device | str = "cpu", seed: int | None = None) -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded with ``seed``, or with :func:`secret_seed` when ``None``."""
    return torch.Generator(device=device).manual_seed(secret_seed() if seed is None else int(seed))
