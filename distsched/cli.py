"""``distsched <command>``: the command-line entry point.

Each command lives in ``distsched/commands/<name>.py`` with two functions,
``add_arguments(parser)`` and ``run(args) -> int``. Command modules import heavy libraries
(torch, Ray, Opacus) inside ``run`` so that ``distsched --help`` stays fast.

Bad input never shows a traceback: a ``ValueError``, an ``OSError`` (a missing, unreadable or
unwritable path, a file where a folder belongs) or an argparse error is printed as one line on
stderr and the exit code is 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

#: command name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("distsched.commands.demo", "run the main demo job on the embedded local default"),
    "schedule": ("distsched.commands.schedule", "evaluate, list and plot learning-rate schedules"),
    "diagnose": ("distsched.commands.diagnose", "diagnose a run from its loss curves (verdict, evidence, remedies)"),
    "epsilon": ("distsched.commands.epsilon", "epsilon spent by DP-SGD (Opacus accountants)"),
    "plan": ("distsched.commands.plan", "solve a DP-SGD plan: noise, steps, batch size or epsilon"),
    "train": ("distsched.commands.train", "train CONFIG.yaml on N workers (Ray Train, torchrun or local processes)"),
    "simulate": ("distsched.commands.simulate", "federated simulation on Ray actors (distsched simulate CONFIG.yaml)"),
    "compare": ("distsched.commands.compare", "overlay several runs (loss vs step and vs bytes) and print a table"),
    "audit": ("distsched.commands.audit", "privacy audit in one run: a lower bound on epsilon from gradient canaries"),
}

EXIT_USAGE = 2


class _OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(prog="distsched", description=__doc__.splitlines()[0])
    from distsched import __version__

    parser.add_argument("--version", action="version", version=f"distsched {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_OneLineParser)
    sub.required = True
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(cmd)
        cmd.set_defaults(_module=module)
    return parser


def _one_line(exc: BaseException) -> str:
    """The first line of the message, e.g. ``[Errno 13] Permission denied: '/ro/run'``."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args._module.run(args) or 0)
    except (ValueError, OSError) as exc:
        message = _one_line(exc)
        sys.stderr.write(f"distsched {args.command}: error: {message}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        sys.stderr.write(f"distsched {args.command}: interrupted\n")
        return 130


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
