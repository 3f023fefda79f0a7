"""The top of every script: run ``main(argv)`` and turn user-facing errors into an exit code.

An :class:`~imgclass.errors.ImgClassError` describes bad input (a parameter,
a missing file), not a bug, so the user gets its message on stderr and exit
code 2 instead of a traceback. Ctrl-C ends quietly with the usual 130. Any
other exception is a bug and keeps its traceback.

Usage in ``scripts/N_name.py``::

    def main(argv: list[str]) -> int | None: ...

    if __name__ == "__main__":
        sys.exit(run_main(main))
"""

from __future__ import annotations

import sys
import os
from typing import TYPE_CHECKING, Callable, Sequence

from imgclass.errors import ImgClassError

if TYPE_CHECKING:
    from imgclass.parameters import Parameters, StepSpec

#: Exit code for a user-facing error (bad parameter, missing input), like argparse's.
EXIT_USER_ERROR = 2
#: Exit code after Ctrl-C (128 + SIGINT), what shells report for an interrupted command.
EXIT_INTERRUPTED = 130


def run_main(main: Callable[[list[str]], int | None], argv: Sequence[str] | None = None) -> int:
    """Call ``main(argv)`` (default ``sys.argv[1:]``) and return the process exit code.

    ``main`` returning None means success (0). ``SystemExit`` (e.g. from
    ``--help``) passes through unchanged.
    """
    try:
        code = main(list(sys.argv[1:] if argv is None else argv))
    except ImgClassError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0 if code is None else int(code)


def parse_step(argv: Sequence[str], step: "StepSpec", description: str = "",
               project_dir: str | os.PathLike[str] | None = None) -> "Parameters":
    """The parameters of one step's run: the parameters file, ``--key=value`` overrides, ``--help``.

    ``--help`` lists the parameters ``step`` reads (``step.reads``) with their
    current values. Scripts pass their checkout as ``project_dir``.
    """
    from imgclass.parameters import parse_command_line

    return parse_command_line(argv, step.reads, description or step.summary, project_dir=project_dir)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m imgclass <command> [--key=value ...]``.

    Commands: ``serve`` (step 6: the REST service, as ``scripts/6_deploy.py``).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    commands = {"serve": _serve}
    if not args or args[0] not in commands:
        print(f"usage: python -m imgclass {{{','.join(commands)}}} [--key=value ...] [--help]", file=sys.stderr)
        return EXIT_USER_ERROR
    return run_main(commands[args[0]], args[1:])


def _serve(argv: list[str]) -> None:
    from imgclass.serve.service import STEP, serve

    serve(parse_step(argv, STEP))
