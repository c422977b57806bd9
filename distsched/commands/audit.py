"""``distsched audit CONFIG.yaml [--canaries M] [--confidence C] [--json]``: a privacy audit in one run.

Runs the config's DP-SGD with ``M`` white-box gradient canaries and reports an empirical lower bound on
epsilon (Steinke, Nasr & Jagielski 2023) beside the accountant's epsilon (:mod:`distsched.privacy.audit`).

The audited mechanism is the config's, in one process: Poisson sampling at the run's rate ``q`` (``group``
and one worker: ``q = workers * batch_size / N`` over the whole training set; ``local``: the largest
``q_k = batch_size / N_k``, on the smallest shard), the same planned noise schedule, clipping norm and
number of steps, through distsched's privacy engine (Opacus' ``DPOptimizer`` and its noise generator). The
LR follows the config's schedule (controller and sync-rule factors are left out: they change the
trajectory, not the per-step mechanism). The auditor also tries the noise seed that the code derives from
the config's ``seed`` for reproducible noise, as an attacker who read ``config.yaml`` would.

Exit code: 0 for ``PASS`` (lower bound <= the accountant's epsilon), 1 for ``VIOLATION`` (the accountant's
epsilon is refuted at the stated confidence), 2 for bad input.
"""

from __future__ import annotations

import argparse
import warnings
from typing import Any

#: The reproducible noise seed of worker ``rank`` (as :func:`distsched.privacy.attach_privacy` derives it).
SEED_STRIDE = 1_000_003


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="training config (YAML) with a privacy block")
    parser.add_argument("--canaries", type=int, default=1000,
                        help="gradient canaries, each included with probability 1/2 (default 1000)")
    parser.add_argument("--confidence", type=float, default=0.95, help="confidence of the lower bound (default 0.95)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.epilog = ("exit code 0: PASS (lower bound <= the accountant's epsilon; not a proof of privacy), "
                     "1: VIOLATION (the accountant's epsilon is refuted at the stated confidence), 2: bad input")


def audit_config(cfg: Any, *, canaries: int = 1000, confidence: float = 0.95, **options: Any) -> tuple[Any, str]:
    """Audit the DP-SGD of the training config ``cfg`` (a ``TrainConfig``); returns the
    :class:`~distsched.privacy.audit.AuditReport` and the config's privacy mode. ``options`` go to
    :func:`~distsched.privacy.audit.audit_training` (``canary_seed``, ``tamper``)."""
    import numpy as np
    import torch

    from distsched.privacy.audit import audit_training
    from distsched.privacy.training import resolve_mode
    from distsched.train.loop import make_optimizer, total_steps_of

    if cfg.privacy is None:
        raise ValueError("the config has no privacy block: there is no DP claim to audit")
    privacy, schedule = cfg.privacy, cfg.schedule
    torch.set_num_threads(cfg.threads)
    bundle = cfg.data.load(cfg.seed)
    shards = cfg.data.shards(bundle.targets, cfg.workers, cfg.batch_size, cfg.seed)
    total = total_steps_of(cfg, min(len(s) for s in shards) // cfg.batch_size)
    mode = resolve_mode(privacy.mode, cfg.workers, cfg.sync.every_step)
    if mode == "local":
        indices, batch = min(shards, key=len), cfg.batch_size
    else:
        indices, batch = np.concatenate(shards), cfg.batch_size * cfg.workers
    torch.manual_seed(cfg.seed)
    model = cfg.model.build(bundle.input_shape, bundle.num_classes)
    optimizer = make_optimizer(cfg, model, float(schedule(0)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # Opacus' hints (secure RNG, optimal RDP order)
        report = audit_training(
            privacy, model, optimizer, bundle.train, indices, batch_size=batch, total_steps=total, seed=cfg.seed,
            canaries=canaries, confidence=confidence, known_noise_seeds=[cfg.seed * SEED_STRIDE],
            lr_schedule=schedule, **options,
        )
    return report, mode


def run(args: argparse.Namespace) -> int:
    import json

    from distsched._checks import check_int, check_range
    from distsched.config import load_yaml
    from distsched.privacy.audit import PASS
    from distsched.train.config import config_from_mapping

    canaries = check_int("canaries", args.canaries, 2)
    confidence = check_range("confidence", args.confidence, 0.0, 1.0, low_open=True, high_open=True)
    data = load_yaml(args.config)
    if isinstance(data, dict) and "rounds" in data:
        raise ValueError(f"{args.config} is a federated simulation config: the audit covers DP-SGD training "
                         "configs (distsched train), not DP-FedAvg")
    report, mode = audit_config(config_from_mapping(data), canaries=canaries, confidence=confidence)
    result = {"config": str(args.config), "privacy_mode": mode, **report.to_dict()}
    if args.json:
        print(json.dumps(result))
    else:
        rows = [
            ("verdict", report.verdict),
            ("epsilon (accountant)", f"{report.epsilon_accountant:.4f}  ({report.accountant}, delta {report.delta:g})"),
            ("epsilon lower bound", f"{report.epsilon_lower:.4f}  (confidence {report.confidence:g}, "
                                    f"{report.correct}/{report.guesses} right, score '{report.score}')"),
            ("detectable up to", f"{report.detectable_epsilon:.4f}  ({report.canaries} canaries, "
                                 f"{report.tests} tests)"),
            ("mechanism", f"{report.steps} steps, q {report.sample_rate:.4g}, noise multiplier "
                          f"{report.noise_multiplier:.4g} at step 0, mode {mode} audited in one process"),
        ]
        for name, value in rows:
            print(f"{name:<22}{value}")
        if report.verdict == PASS:
            print("PASS: no evidence against the accountant's epsilon (a lower bound only: not a proof of privacy)")
        else:
            print("VIOLATION: the run is not as private as its accountant says (at the stated confidence)")
    return 0 if report.verdict == PASS else 1
