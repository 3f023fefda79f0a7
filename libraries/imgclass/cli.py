"""The command line: the top of every script, and ``python -m imgclass <command>`` (also ``imgclass``).

Scripts::

    def main(argv: list[str]) -> int | None:
        params = parse_step(argv, STEP, __doc__, PROJECT_DIR)
        ...

    if __name__ == "__main__":
        sys.exit(run_main(main))

:func:`run_main` turns a user-facing error into one line and exit code 2:
an :class:`~imgclass.errors.ImgClassError` describes bad input (a parameter,
a missing file), not a bug, so the user gets its message on stderr instead of
a traceback. Ctrl-C ends quietly with the usual 130. Any other exception is a
bug and keeps its traceback.

:func:`parse_step` reads the parameters a step declares (its ``STEP``) and
warns about an override the step does not read, naming the scripts that do
read it: ``scripts/3_runDNN.py --rf_inputResolution=299`` changes nothing,
and the user should hear so before the run, not after.

Commands (``python -m imgclass --help``): ``run`` (steps 1-5 in one process,
so torch, scikit-learn and matplotlib are loaded once instead of once per
script), ``serve`` (step 6) and ``parameters`` (list them; check or rewrite
``PARAMETERS.py`` and the README's tables from the declarations).

This is the top layer: it may import every step module, which is why the
registry of steps lives here. Those modules are light to import; the heavy
libraries load where work starts, so ``--help`` and a bad value answer at once.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Collection, Iterable, Sequence

from imgclass.errors import ImgClassError, ParameterError

if TYPE_CHECKING:
    from imgclass.parameters import Parameters, StepSpec

#: Exit code for a user-facing error (bad parameter, missing input), like argparse's.
EXIT_USER_ERROR = 2
#: Exit code after Ctrl-C (128 + SIGINT), what shells report for an interrupted command.
EXIT_INTERRUPTED = 130
#: Exit code of ``parameters --check`` when a file differs from the declarations (as ``black --check``).
EXIT_DRIFT = 1

#: How warnings name ``python -m imgclass run``.
RUN_LABEL = "steps 1-5 (python -m imgclass run)"

USAGE = """\
usage: python -m imgclass <command> [--key=value ...] [--parametersFile=PATH] [--help]

commands:
  run         steps 1-5 in one process: what scripts/1_prepareData.py .. 5_evaluate.py do, with
              torch, scikit-learn and matplotlib loaded once
  serve       step 6: serve the trained model over HTTP (as scripts/6_deploy.py)
  parameters  list the parameters with their values; check or rewrite PARAMETERS.py and the
              README's parameter tables from the declarations (parameters --help)

The parameters file is --parametersFile=PATH, else $IMGCLASS_PARAMETERS, else the first PARAMETERS.py
in the current folder or one of its parents. `<command> --help` lists what a command reads."""

PARAMETERS_USAGE = """\
usage: python -m imgclass parameters [--check] [--write-file] [--write-readme] [--markdown]
                                     [--parametersFile=PATH] [--readme=PATH]

Every parameter is declared once, in imgclass/parameters.py (type, default, allowed values, help,
section). PARAMETERS.py's comments and the README's parameter tables are written from those
declarations; a value you set in PARAMETERS.py is yours and is always kept.

  (no option)     list every parameter with its current value and help
  --check         exit 1, showing a diff, if the comments or keys of the parameters file (or the
                  tables of --readme / the README.md beside it) differ from the declarations
  --write-file    rewrite the parameters file's comments, adding new parameters with their
                  defaults; your values are kept as written (your own comments are not)
  --write-readme  rewrite the README's tables between its BEGIN/END parameter-table lines
  --markdown      print the README's parameter tables"""


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


# --- steps and the parameters they read -------------------------------------------------------------------


def registered_steps() -> tuple["StepSpec", ...]:
    """Every step and script that reads parameters, in the order of the scripts.

    Each ``STEP`` is declared next to its function; this is the one list of
    them, used to say which script reads an override that the running one
    does not.
    """
    from imgclass.data import dedup, download, scraping
    from imgclass.serve import batch, client, service
    from imgclass.tracking import registry

    return (download.STEP, *pipeline_steps(), service.STEP, client.STEP, batch.STEP, registry.STEP, scraping.STEP,
            dedup.STEP)


def pipeline_steps() -> tuple["StepSpec", ...]:
    """Steps 1-5 as they run: each also reads the run-tracking parameters (:func:`run_step` tracks it)."""
    from imgclass import pipeline
    from imgclass.tracking import tracked

    return tuple(tracked(step) for step in pipeline.STEPS)


def run_step(step: "StepSpec", params: "Parameters", progress: bool = False, tracking: Any = None) -> Any:
    """Run one of steps 1-5 inside the dataset's MLflow run and return its report.

    The one place where steps run (scripts 1-5 and ``python -m imgclass run``):
    :class:`~imgclass.tracking.tracker.StepTracker` starts (step 1) or resumes
    (steps 2-5) the run in a worker process beside the step, and logs what the
    step did after its files are written; a tracking failure is a warning,
    never a failed step. ``tracking``: a
    :class:`~imgclass.tracking.tracker.TrackingSession` shared by several steps
    (default: one for this step, which goes on logging after this returns; only
    step 1 waits, for its run to exist). Before reading this step's run or the
    registry, call :func:`imgclass.tracking.wait_for_pending`.
    """
    from imgclass import pipeline
    from imgclass.tracking.tracker import StepTracker

    functions: dict[str, Callable[[], Any]] = {
        "prepare": lambda: pipeline.prepare_data(params),
        "build": lambda: pipeline.build_featurizer(params, progress=progress),
        "featurize": lambda: pipeline.featurize_dataset(params, progress=progress),
        "train": lambda: pipeline.train_classifier(params),
        "evaluate": lambda: pipeline.evaluate(params),
    }
    with StepTracker(params, step, tracking) as tracker:
        report = functions[step.name]()
        tracker.record(report)
    return report


def unused_override_warnings(keys: Iterable[str], reads: Collection[str], user: str) -> list[str]:
    """One warning per overridden parameter that ``user`` does not read, naming the scripts that do.

    ``keys`` are canonical parameter names; ``user`` is how the message names
    the step (``"step 3 (featurize)"``).
    """
    unused = [key for key in keys if key not in reads]
    if not unused:
        return []  # the common case does not import the other steps' modules
    steps = registered_steps()
    warnings = []
    for key in unused:
        readers = list(dict.fromkeys(step.script for step in steps if key in step.reads))
        where = f"it is read by {', '.join(readers)}" if readers else "no script reads it"
        warnings.append(f"warning: {key} is not used by {user}; {where}")
    return warnings


def parse_step(argv: Sequence[str], step: "StepSpec", description: str = "",
               project_dir: str | os.PathLike[str] | None = None) -> "Parameters":
    """The parameters of one step's run: the parameters file, ``--key=value`` overrides, ``--help``.

    ``--help`` lists the parameters ``step`` reads (``step.reads``) with their
    current values, and exits. An override of a parameter the step does not
    read is accepted but warned about on stderr. Scripts pass their checkout
    as ``project_dir``.
    """
    return parse_steps(argv, [step], description or step.summary, project_dir, step.label)


def parse_steps(argv: Sequence[str], steps: Sequence["StepSpec"], description: str,
                project_dir: str | os.PathLike[str] | None, label: str) -> "Parameters":
    """:func:`parse_step` for several steps run together (``label`` names them in warnings)."""
    from imgclass.parameters import CommandLine, format_help, load_parameters, parameter_names

    reads = [name for name in parameter_names() if any(name in step.reads for step in steps)]
    command_line = CommandLine.parse(argv)
    params = load_parameters(command_line.overrides, command_line.parameters_file, project_dir)
    for warning in unused_override_warnings(command_line.override_keys(), reads, label):
        print(warning, file=sys.stderr)
    if command_line.wants_help:
        print(format_help(params, reads, description))
        raise SystemExit(0)
    return params


# --- python -m imgclass ----------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m imgclass <command> [--key=value ...]`` (and the ``imgclass`` console script)."""
    args = list(sys.argv[1:] if argv is None else argv)
    commands: dict[str, Callable[[list[str]], int | None]] = {
        "run": run_pipeline, "serve": _serve, "parameters": _parameters}
    if args and args[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    if not args or args[0] not in commands:
        problem = f"unknown command {args[0]!r}\n" if args else ""
        print(f"{problem}{USAGE}", file=sys.stderr)
        return EXIT_USER_ERROR
    return run_main(commands[args[0]], args[1:])


def run_pipeline(argv: list[str]) -> None:
    """``python -m imgclass run``: steps 1-5 in this process, each printing what its script prints."""
    from imgclass.layout import DatasetLayout
    from imgclass.tracking.tracker import TrackingSession

    steps = pipeline_steps()
    params = parse_steps(argv, steps, "Run steps 1-5 (split, build the DNN, featurize, train the SVM, "
                         "evaluate) in one process.", None, RUN_LABEL)
    progress = sys.stderr.isatty()
    start = time.perf_counter()
    # One tracking worker for the five steps, waited for at the end (its cost: BENCHMARKS.md): the user sees
    # the registered version and the run's end, and what comes next (a promotion, a notebook) finds them.
    with TrackingSession() as tracking:
        for step in steps:
            print(f"== {step.label[0].upper()}{step.label[1:]}: {step.summary} ({step.script})", flush=True)
            print(run_step(step, params, progress, tracking).summary(), flush=True)
    print(f"== Steps 1-5 done in {time.perf_counter() - start:.1f} s; results in "
          f"{DatasetLayout.from_parameters(params).results_dir}")


def _serve(argv: list[str]) -> None:
    from imgclass.serve.service import STEP, serve

    serve(parse_step(argv, STEP))


def _parameters(argv: list[str]) -> int:
    """``python -m imgclass parameters``: see :data:`PARAMETERS_USAGE`."""
    from imgclass import parameters as P
    from imgclass.io.atomic import write_text

    actions: list[str] = []
    parameters_file: str | None = None
    readme: str | None = None
    for arg in argv:
        if arg in ("-h", "--help"):
            print(PARAMETERS_USAGE)
            return 0
        if arg.startswith("--parametersFile="):
            parameters_file = arg.split("=", 1)[1]
        elif arg.startswith("--readme="):
            readme = arg.split("=", 1)[1]
        elif arg in ("--check", "--write-file", "--write-readme", "--markdown"):
            actions.append(arg)
        else:
            raise ParameterError(f"unknown option {arg!r} of 'parameters'; see python -m imgclass parameters --help")
    path = P.resolve_parameters_file(parameters_file)
    readme_path = Path(readme) if readme else path.parent / "README.md"
    if not actions:
        print(P.format_help(P.load_parameters(parameters_file=path)))
        return 0
    drifted = False
    for action in actions:
        if action == "--markdown":
            print(P.render_markdown(), end="")
        elif action == "--write-file":
            text = _read(path)
            new = P.render_parameters_file(P.value_sources(text, str(path)))
            _report_write(path, new != text)
            if new != text:
                write_text(path, new)
        elif action == "--write-readme":
            text = _read(readme_path)
            new = P.readme_with_tables(text, str(readme_path))
            _report_write(readme_path, new != text)
            if new != text:
                write_text(readme_path, new)
        else:  # --check
            checks = [(path, P.parameters_file_drift(_read(path), str(path)), "--write-file")]
            if readme or (readme_path.is_file() and P.README_BEGIN in _read(readme_path)):
                checks.append((readme_path, P.readme_drift(_read(readme_path), str(readme_path)), "--write-readme"))
            for checked, diff, fix in checks:
                if diff:
                    drifted = True
                    print(f"{checked} differs from the declarations in imgclass/parameters.py:\n{diff}\n"
                          f"fix: python -m imgclass parameters {fix} (values are kept)")
                else:
                    print(f"{checked}: in line with the declarations")
    return EXIT_DRIFT if drifted else 0


def _read(path: Path) -> str:
    if not path.is_file():
        raise ParameterError(f"file not found: {path}")
    return path.read_text(encoding="utf-8")


def _report_write(path: Path, changed: bool) -> None:
    print(f"Rewrote {path} from the declarations" if changed else f"{path}: already in line with the declarations")
