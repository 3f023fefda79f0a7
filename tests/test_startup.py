"""Start-up: ``--help`` and a bad parameter answer at once, because nothing heavy is imported before work starts.

Loading torch, scikit-learn or matplotlib takes seconds; a user who asks for
``--help`` or mistypes a value should not wait for them. Checked
deterministically: each module that a script or step imports, and each script
run with ``--help`` or a bad value, in a fresh interpreter, must leave every
heavy library out of ``sys.modules``. A generous wall-clock bound catches
anything slow that is not on the list.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from conftest import PROJECT_DIR, PYTHON

#: Libraries that take long to import; they belong inside the functions that use them.
HEAVY = ("torch", "torchvision", "sklearn", "matplotlib", "fastapi", "uvicorn", "pandas", "imagehash", "scipy")

#: Modules whose import must stay light: the package, the command line, and every step's module.
LIGHT_MODULES = ("imgclass", "imgclass.cli", "imgclass.parameters", "imgclass.layout", "imgclass.pipeline",
                 "imgclass.pipeline.prepare", "imgclass.pipeline.build", "imgclass.pipeline.featurize",
                 "imgclass.pipeline.train", "imgclass.pipeline.evaluate", "imgclass.serve.service",
                 "imgclass.serve.client", "imgclass.serve.batch", "imgclass.data.download",
                 "imgclass.data.scraping", "imgclass.data.dedup")

#: The numbered scripts and the dataset-building ones (buildDemoImages.py is a maintainer's tool without parameters).
SCRIPTS = sorted(p.name for p in (PROJECT_DIR / "scripts").glob("*.py") if p.name != "buildDemoImages.py")

#: Seconds allowed for ``--help`` or a bad value, measured inside the process (the goal is well under 1 s;
#: the bound is loose because tests share a small machine).
SECONDS = 3.0

_PROBE = """
import json, runpy, sys, time
start = time.perf_counter()
kind, target, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
code = 0
if kind == "module":
    __import__(target)
    if target == "imgclass.cli":
        sys.modules[target].registered_steps()  # every step module, as the override warnings import them
else:
    sys.argv = [target, *argv]
    try:
        runpy.run_path(target, run_name="__main__") if kind == "script" else runpy.run_module(
            target, run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
heavy = sorted(name for name in %r if name in sys.modules)
print(json.dumps({"code": code, "heavy": heavy, "seconds": time.perf_counter() - start}))
""" % (HEAVY,)


def _probe(kind: str, target: str, *argv: str) -> dict:
    result = subprocess.run([PYTHON, "-c", _PROBE, kind, target, *argv], cwd=PROJECT_DIR, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("module", LIGHT_MODULES)
def test_importing_a_step_module_loads_nothing_heavy(module: str) -> None:
    probe = _probe("module", module)
    assert probe["heavy"] == [], f"importing {module} loads {probe['heavy']}: import them where the work starts"


@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.parametrize("argv, code", [(["--help"], 0), (["--ratioTrainTest=2"], 2)], ids=["help", "bad-value"])
def test_help_and_a_bad_value_answer_without_heavy_imports(script: str, argv: list[str], code: int) -> None:
    probe = _probe("script", f"scripts/{script}", *argv)
    assert probe["code"] == code
    assert probe["heavy"] == [], f"scripts/{script} {argv[0]} loads {probe['heavy']} before it answers"
    assert probe["seconds"] < SECONDS


@pytest.mark.parametrize("command", ["run", "serve", "parameters"])
def test_the_commands_answer_help_without_heavy_imports(command: str) -> None:
    probe = _probe("module-main", "imgclass", command, "--help")
    assert probe["code"] == 0 and probe["heavy"] == [] and probe["seconds"] < SECONDS
    bad = _probe("module-main", "imgclass", command, "--svm_cvFolds=1")
    assert bad["code"] == 2 and bad["heavy"] == []
