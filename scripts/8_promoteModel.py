"""Step 8: make a registered version of the dataset's model the champion (models:/<name>@champion).

Steps 1-4 register each trained model as a new version of
mlflow_registeredModelName (default imgclass-<datasetName>) and step 5 tags it
with its test accuracy. This script moves the alias 'champion' to a version:
by default the one the dataset's last run registered. It refuses (changing
nothing) when that version's test accuracy is below the current champion's,
or when it was never evaluated, unless --force is given. Serve the champion
with scripts/6_deploy.py --deploy_modelUri=models:/<name>@champion.

Scripts 1-5 do not wait for their MLflow tracking: a worker process logs and
registers in the background. This script waits for the dataset's workers
first, so it can run right after scripts/5_evaluate.py.

Script options (besides the --key=value parameters):
  --version=N   promote version N instead of the last run's
  --force       promote even if its test accuracy is lower (or unknown)
"""

from __future__ import annotations

import sys
from pathlib import Path

from imgclass.cli import parse_step, run_main
from imgclass.errors import ParameterError
from imgclass.tracking.registry import STEP, promote_for

#: This checkout: its PARAMETERS.py is the default, its resources/ hold the demo images and weight files.
PROJECT_DIR = Path(__file__).resolve().parents[1]


def split_script_options(argv: list[str]) -> tuple[str | None, bool, list[str]]:
    """``(version, force, remaining arguments)``: this script's own flags taken out of ``argv``."""
    version, force, rest = None, False, []
    for arg in argv:
        if arg == "--force":
            force = True
        elif arg.startswith("--version="):
            version = arg.split("=", 1)[1]
            if not version.isdigit():
                raise ParameterError(f"--version must be a version number, e.g. --version=3 (got {version!r})")
        else:
            rest.append(arg)
    return version, force, rest


def main(argv: list[str]) -> None:
    version, force, rest = split_script_options(argv)
    params = parse_step(rest, STEP, __doc__, PROJECT_DIR)
    print(promote_for(params, version, force).summary())


if __name__ == "__main__":
    sys.exit(run_main(main))
