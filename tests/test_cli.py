"""The command line: unused overrides are warned about, ``python -m imgclass run|parameters|serve``."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

import imgclass.parameters as P
from imgclass import pipeline
from imgclass.cli import EXIT_USER_ERROR, RUN_LABEL, main, parse_step, parse_steps, registered_steps, run_main
from imgclass.pipeline.featurize import STEP as FEATURIZE

from conftest import PROJECT_DIR, PYTHON, make_dataset


def _imgclass(*args: str, cwd: Path = PROJECT_DIR, timeout: int = 60) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "-m", "imgclass", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def test_usage_and_unknown_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(f"  {command} " in out for command in ("run", "serve", "parameters"))
    assert main([]) == EXIT_USER_ERROR
    assert main(["train"]) == EXIT_USER_ERROR
    assert "unknown command 'train'" in capsys.readouterr().err


# --- overrides the step does not read ----------------------------------------------------------------------


def test_an_override_the_step_does_not_read_is_warned_about(capsys: pytest.CaptureFixture[str]) -> None:
    params = parse_step(["--rf_inputResolution=299", "--run_mbSize=8"], FEATURIZE)
    assert params.rf_inputResolution == 299 and params.run_mbSize == 8  # accepted all the same
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1, err  # run_mbSize is read by step 3: no warning
    assert err[0].startswith("warning: rf_inputResolution is not used by step 3 (featurize); it is read by "
                             "scripts/2_refineDNN.py")


def test_the_warning_names_every_script_that_reads_the_parameter(capsys: pytest.CaptureFixture[str]) -> None:
    parse_step(["--deploy_port=9000", "--rf_inputResoluton=160"], FEATURIZE)  # an alias counts as its key
    err = capsys.readouterr().err
    readers = [step.script for step in registered_steps() if "deploy_port" in step.reads]
    assert {"scripts/6_deploy.py", "scripts/6_callWebservice.py"} <= set(readers)
    assert f"warning: deploy_port is not used by step 3 (featurize); it is read by {', '.join(readers)}" in err
    assert "warning: rf_inputResolution is not used by step 3" in err


def test_run_warns_about_what_steps_1_to_5_do_not_read(capsys: pytest.CaptureFixture[str]) -> None:
    params = parse_steps(["--deploy_topK=3", "--svm_cvFolds=3", "--rf_maxEpochs=2"], pipeline.STEPS, "", None,
                         RUN_LABEL)
    assert params.deploy_topK == 3
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(
        "warning: deploy_topK is not used by steps 1-5 (python -m imgclass run); it is read by scripts/6_deploy.py")


def test_a_bad_value_is_an_error_before_any_warning(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_main(lambda argv: parse_step(argv, FEATURIZE) and None,
                    ["--rf_inputResolution=5", "--run_mbSize=8"]) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert err.startswith("error: parameter 'rf_inputResolution'") and "warning" not in err


def test_help_lists_what_the_step_reads(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_step(["--help", "--run_mbSize=8"], FEATURIZE)
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--run_mbSize" in out and "= 8" in out and P.parameter_help("run_mbSize") in out
    assert "--svm_cvFolds" not in out


def test_every_registered_step_reads_declared_parameters() -> None:
    steps = registered_steps()
    assert len({step.script for step in steps}) == len(steps), "one StepSpec per script"
    assert [step.name for step in pipeline.STEPS] == ["prepare", "build", "featurize", "train", "evaluate"]
    unread = set(P.parameter_names()) - {name for step in steps for name in step.reads}
    assert not unread, f"parameters no step reads: {sorted(unread)}"


# --- python -m imgclass parameters ---------------------------------------------------------------------------


def test_parameters_check_passes_for_the_repository() -> None:
    result = _imgclass("parameters", "--check", "--parametersFile=PARAMETERS.py")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("in line with the declarations") == 2  # PARAMETERS.py and README.md


def test_parameters_write_file_keeps_values_and_check_reports_drift(tmp_path: Path) -> None:
    path = tmp_path / "PARAMETERS.py"
    path.write_text('datasetName = "mine"\nsvm_CVals = [0.5] * 2\n', encoding="utf-8")
    result = _imgclass("parameters", "--check", f"--parametersFile={path}")
    assert result.returncode == 1 and "svm_cvFolds" in result.stdout and "--write-file" in result.stdout

    assert _imgclass("parameters", "--write-file", f"--parametersFile={path}").returncode == 0
    text = path.read_text(encoding="utf-8")
    assert 'datasetName = "mine"' in text and "svm_CVals = [0.5] * 2" in text
    assert P.parameters_file_drift(text) == ""
    params = P.load_parameters(parameters_file=path)
    assert params.svm_CVals == [0.5, 0.5] and params.svm_cvFolds == 5

    listing = _imgclass("parameters", f"--parametersFile={path}")
    assert "--datasetName" in listing.stdout and "'mine'" in listing.stdout
    assert _imgclass("parameters", "--markdown").stdout == P.render_markdown()
    assert _imgclass("parameters", "--frobnicate").returncode == EXIT_USER_ERROR


def test_parameters_write_readme_fills_the_marked_block(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"# Mine\n{P.README_BEGIN}\n{P.README_END}\n", encoding="utf-8")
    (tmp_path / "PARAMETERS.py").write_text(P.render_parameters_file(), encoding="utf-8")
    assert _imgclass("parameters", "--check", f"--parametersFile={tmp_path / 'PARAMETERS.py'}").returncode == 1
    assert _imgclass("parameters", "--write-readme", f"--readme={readme}").returncode == 0
    assert P.readme_drift(readme.read_text(encoding="utf-8")) == ""
    assert _imgclass("parameters", "--check", f"--parametersFile={tmp_path / 'PARAMETERS.py'}").returncode == 0


# --- python -m imgclass run: steps 1-5 in one process ----------------------------------------------------------


def test_run_does_steps_1_to_5_in_one_process(tmp_path: Path) -> None:
    make_dataset(tmp_path / "images" / "tiny", {"circles": 8, "squares": 8})
    parameters = tmp_path / "PARAMETERS.py"
    parameters.write_text('datasetName = "tiny"\nrootDir = "."\nrf_pretrainedModelFilename = "efficientnet_lite0"\n'
                          "rf_inputResolution = 64\nrun_device = 'cpu'\nrun_workers = 0\nrun_precision = 'fp32'\n"
                          "svm_cvFolds = 2\nsvm_nJobs = 1\nsvm_CVals = [0.1, 1]\neval_numExampleImages = 4\n",
                          encoding="utf-8")
    result = _imgclass("run", f"--parametersFile={parameters}", "--randomSeed=1", cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    headers = [line for line in result.stdout.splitlines() if line.startswith("== Step ")]
    assert [h.split(":")[0] for h in headers] == [f"== {step.label[0].upper()}{step.label[1:]}"
                                                  for step in pipeline.STEPS]
    assert "Steps 1-5 done" in result.stdout and "warning" not in result.stderr
    proc, results = tmp_path / "proc" / "tiny", tmp_path / "results" / "tiny"
    for path in (proc / "split.csv", proc / "featurizer.pth", proc / "features.npy", proc / "svm.joblib",
                 results / "metrics.json", results / "confusion_matrix.png"):
        assert path.is_file(), path
    metrics = json.loads((results / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["n_test_images"] == 4 and metrics["classifier"] == "svm"
