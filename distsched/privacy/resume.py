"""What a resumed DP run may change: nothing that loosens the guarantee its checkpoint was written under.

A checkpoint's privacy state holds the settings the spent budget was measured with. A resume is refused
(one ``ValueError`` naming the key) when its settings would make the run's claim wrong:

* ``target_epsilon`` dropped or raised (a smaller one is kept: the budget only shrinks);
* ``delta`` or ``accountant`` changed (an epsilon at another delta, or from another accountant, is not the
  same claim), a larger PRV ``eps_error``;
* ``reproducible`` flipped: a run that drew its noise from the config's seed is not private, and a resume
  with secret noise would not make the steps already taken private (the summary would say ``private: true``);
  the other way round, the run would silently stop being private;
* ``mode`` changed away from ``local`` or a ``local`` run resized: in local mode each worker holds its own
  accountant (the run spends the max over workers), which no other mode or size carries over.

:func:`check_resume` is called by the driver before any worker starts (so the user gets one line, exit 2)
and again by :class:`~distsched.privacy.PrivateTraining` and the federated DP wrapper when they load it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def check_resume(
    saved: Mapping[str, Any],
    *,
    target_epsilon: float | None,
    delta: float,
    accountant: str,
    reproducible: bool,
    eps_error: float | None = None,
    mode: str | None = None,
    world_size: int | None = None,
    saved_world_size: int | None = None,
    prefix: str = "privacy",
) -> None:
    """ValueError (one line, naming ``<prefix>.<key>``) when resuming the privacy state ``saved`` with these
    settings would loosen its guarantee (module docstring). Keys a checkpoint does not hold (older ones)
    are not checked."""
    guard = saved.get("guard")
    if guard is not None and target_epsilon is None:
        raise ValueError(f"{prefix}.target_epsilon: the run was started with target_epsilon="
                         f"{float(guard['target_epsilon']):g}; a resume cannot drop the budget")
    if guard is not None and target_epsilon is not None and target_epsilon > float(guard["target_epsilon"]):
        raise ValueError(f"{prefix}.target_epsilon: the run was started with target_epsilon="
                         f"{float(guard['target_epsilon']):g}; a resume cannot raise it to {target_epsilon:g}")
    mechanism = (saved.get("accountant") or {}).get("mechanism")
    if mechanism is not None and mechanism != accountant:
        raise ValueError(f"{prefix}.accountant: the run was started with accountant {mechanism!r}; "
                         f"resume with it, got {accountant!r}")
    saved_delta = saved.get("delta", guard.get("delta") if guard is not None else None)
    if saved_delta is not None and float(saved_delta) != float(delta):
        raise ValueError(f"{prefix}.delta: the run was started with delta={float(saved_delta):g}; resume with it, "
                         f"got {delta:g}")
    if eps_error is not None and "eps_error" in saved and eps_error > float(saved["eps_error"]):
        raise ValueError(f"{prefix}.eps_error: the run was started with eps_error={float(saved['eps_error']):g}; "
                         f"a resume cannot loosen it to {eps_error:g}")
    if "reproducible" in saved:
        check_reproducible(bool(saved["reproducible"]), reproducible, prefix)
    saved_mode = saved.get("mode")
    if saved_mode == "local" and mode is not None and (
            mode != "local" or (world_size is not None and saved_world_size is not None
                                and world_size != saved_world_size)):
        raise ValueError(f"{prefix}.mode: the run was started in local mode (one accountant per shard) at "
                         f"{saved_world_size} workers; it resumes only in local mode at that size, got {mode} "
                         f"at {world_size}")


def check_reproducible(saved: bool, reproducible: bool, prefix: str = "privacy") -> None:
    """ValueError when a run started with ``reproducible: saved`` resumes with another value (module docstring)."""
    if bool(saved) != bool(reproducible):
        was = "true (noise from the config's seed: NOT private)" if saved else "false (secret noise)"
        raise ValueError(f"{prefix}.reproducible: the run was started with reproducible: {was}; resume with it, "
                         f"got {str(bool(reproducible)).lower()}")
