"""Parameters: the repo's PARAMETERS.py, overrides, type checks, clear errors, --help."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from imgclass.errors import ParameterError
from imgclass.parameters import (Parameters, load_parameters, parameter_names,
                                 parse_override, read_parameters_file)

from conftest import PROJECT_DIR, PYTHON


DEFAULT_PARAMETERS_FILE = PROJECT_DIR / "PARAMETERS.py"


def test_repo_parameters_file_defines_every_parameter_validly() -> None:
    values = read_parameters_file(DEFAULT_PARAMETERS_FILE)
    assert set(parameter_names()) <= set(values), "PARAMETERS.py must list every parameter"
    params = load_parameters(parameters_file=DEFAULT_PARAMETERS_FILE)
    assert params.rf_pretrainedModelFilename == "resnet18"  # the original's default backbone
    assert params.svm_CVals == [1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0]
    assert params.ratioTrainTest == 0.75


def test_overrides_are_typed_by_declaration() -> None:
    params = load_parameters(["--svm_cvFolds=3", "--ratioTrainTest=0.5", "--svm_boL2Normalize=false",
                              "--datasetName=myData", "--svm_CVals=0.1,1", "--rf_lrPerMb=[0.01, 0.001]"])
    assert params.svm_cvFolds == 3 and isinstance(params.svm_cvFolds, int)
    assert params.ratioTrainTest == 0.5
    assert params.svm_boL2Normalize is False
    assert params.datasetName == "myData"
    assert params.svm_CVals == [0.1, 1.0]
    assert params.rf_lrPerMb == [0.01, 0.001]
    assert load_parameters(["--rf_lrPerMb=[0.01]*2+[0.001]"]).rf_lrPerMb == [0.01, 0.01, 0.001]
    with pytest.raises(ParameterError, match="rf_lrPerMb"):
        load_parameters(["--rf_lrPerMb=__import__('os').getcwd()"])


def test_keyword_values_and_replace_are_validated() -> None:
    params = load_parameters(randomSeed=7)
    assert params.randomSeed == 7
    assert params.replace(classifier="dnn").classifier == "dnn"
    with pytest.raises(ParameterError, match="classifier"):
        params.replace(classifier="knn")


@pytest.mark.parametrize("override, words", [
    ("--svm_cvFold=3", ["unknown parameter 'svm_cvFold'", "svm_cvFolds"]),
    ("--classifier=knn", ["'classifier'", "'svm'", "'dnn'", "'svmDnnRefined'"]),
    ("--svm_cvFolds=three", ["'svm_cvFolds'", "integer"]),
    ("--svm_cvFolds=2.5", ["'svm_cvFolds'", "integer"]),
    ("--ratioTrainTest=1.5", ["'ratioTrainTest'", "between 0 and 1"]),
    ("--rf_dropoutRate=1", ["'rf_dropoutRate'", "[0, 1)"]),
    ("--rf_lrPerMb=[]", ["'rf_lrPerMb'", "non-empty"]),
    ("--rf_lrPerMb=[0.1,-0.01]", ["'rf_lrPerMb'", "> 0"]),
    ("--rf_maxEpochs=-1", ["'rf_maxEpochs'", ">= 0"]),
    ("--svm_boL2Normalize=maybe", ["'svm_boL2Normalize'", "true or false"]),
    ("--run_device=gpu", ["'run_device'", "'cuda'"]),
    ("--rf_pretrainedModelFilename=vgg16", ["'rf_pretrainedModelFilename'", "resnet18"]),
    ("--datasetName=../x", ["'datasetName'", "folder name"]),
    ("datasetName=x", ["--key=value"]),
])
def test_bad_values_name_the_key_and_what_is_allowed(override: str, words: list[str]) -> None:
    with pytest.raises(ParameterError) as info:
        load_parameters([override])
    for word in words:
        assert word in str(info.value)


def test_misspelled_original_key_is_an_alias() -> None:
    assert parse_override("--rf_inputResoluton=160") == ("rf_inputResolution", 160)


def test_file_errors(tmp_path: Path) -> None:
    path = tmp_path / "P.py"
    path.write_text("svm_cvFolds = '5'\n")
    with pytest.raises(ParameterError, match="'svm_cvFolds' must be an integer"):
        load_parameters(parameters_file=path)
    path.write_text("svm_cvFold = 5\n")
    with pytest.raises(ParameterError, match="unknown parameter 'svm_cvFold' in .*P.py"):
        load_parameters(parameters_file=path)
    path.write_text("rf_inputResoluton = 160\nrf_inputResolution = 224\n")
    with pytest.raises(ParameterError, match="both 'rf_inputResoluton' and 'rf_inputResolution'"):
        load_parameters(parameters_file=path)
    path.write_text("rf_inputResoluton = 160\nimport os\n")
    assert load_parameters(parameters_file=path).rf_inputResolution == 160
    with pytest.raises(ParameterError, match="not found"):
        load_parameters(parameters_file=tmp_path / "missing.py")


def test_pth_file_names_select_a_backbone() -> None:
    for name in ["resnet18-f37072fd.pth", "/x/resnet50-0676ba61.pth", "efficientnet-lite0-57934424.pth"]:
        assert load_parameters([f"--rf_pretrainedModelFilename={name}"]).rf_pretrainedModelFilename == name
    with pytest.raises(ParameterError):
        load_parameters(["--rf_pretrainedModelFilename=resnet180-x.pth"])


def test_root_dir_is_relative_to_the_parameters_file(tmp_path: Path) -> None:
    path = tmp_path / "P.py"
    path.write_text("rootDir = 'somewhere'\n")
    assert load_parameters(parameters_file=path).root_path == (tmp_path / "somewhere").resolve()
    assert isinstance(load_parameters(), Parameters)


def test_help_lists_the_scripts_parameters_with_values() -> None:
    result = subprocess.run([PYTHON, "scripts/4_trainSVM.py", "--help", "--svm_cvFolds=4"], cwd=PROJECT_DIR,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    assert "--svm_cvFolds" in result.stdout and "= 4" in result.stdout
    assert "--rf_dropoutRate" not in result.stdout  # only what the script uses


def test_script_reports_a_bad_parameter_without_traceback() -> None:
    result = subprocess.run([PYTHON, "scripts/1_prepareData.py", "--ratioTrainTest=2"], cwd=PROJECT_DIR,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "ratioTrainTest" in result.stderr and "Traceback" not in result.stderr


def test_readme_documents_every_parameter() -> None:
    readme = (PROJECT_DIR / "README.md").read_text(encoding="utf-8")
    missing = [name for name in parameter_names() if f"`{name}`" not in readme]
    assert not missing, f"README.md does not document: {missing}"
