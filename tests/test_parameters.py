"""Parameters: the declarations, the repo's PARAMETERS.py and README generated from them, overrides,
type checks, bounded list literals, clear errors, --help."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

import imgclass.parameters as P
from imgclass.errors import ParameterError
from imgclass.parameters import (MAX_LIST_ITEMS, Parameters, StepSpec, literal_value, load_parameters,
                                 parameter_names, parse_override, read_parameters_file)

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
    ("--rf_pretrainedModelFilename=notANetwork", ["'rf_pretrainedModelFilename'"]),
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


# --- declared once: PARAMETERS.py and the README are written from the declarations ---------------------------


def test_every_parameter_is_fully_declared() -> None:
    for name in parameter_names():
        assert P.parameter_help(name).strip(), name
        assert isinstance(P.parameter_section(name), P.Section), name
        # the default as PARAMETERS.py spells it is the declared default
        spelled = literal_value(P.spelled_default(name))
        assert P.coerce_value(name, spelled) == getattr(Parameters(), name), name
    titles = [section.title for section, _ in P.sections()]
    assert len(titles) == len(set(titles))
    assert sum(len(names) for _, names in P.sections()) == len(parameter_names())


def test_repo_parameters_file_is_written_from_the_declarations() -> None:
    diff = P.parameters_file_drift(DEFAULT_PARAMETERS_FILE.read_text(encoding="utf-8"), "PARAMETERS.py")
    assert not diff, f"PARAMETERS.py drifted; run `make parameters`:\n{diff}"


def test_readme_tables_are_written_from_the_declarations() -> None:
    diff = P.readme_drift((PROJECT_DIR / "README.md").read_text(encoding="utf-8"))
    assert not diff, f"README.md's parameter tables drifted; run `make parameters`:\n{diff}"


def test_a_changed_value_is_not_drift_but_a_changed_comment_or_key_is() -> None:
    text = P.render_parameters_file()
    edited = text.replace('datasetName = "tuxpaintStamps"', 'datasetName = "myPhotos"').replace(
        "svm_cvFolds = 5", "svm_cvFolds = 3").replace(
        'scrape_items = ["shirt", "pants", "dress", "skirt", "sweater", "scarf", "shoes"]',
        'scrape_items = [\n    "hat",\n    "coat",\n]')
    assert edited.count("myPhotos") == 1 and "svm_cvFolds = 3" in edited and '"coat"' in edited
    assert P.parameters_file_drift(edited) == ""
    assert P.value_sources(edited)["svm_cvFolds"] == "3"

    assert "svm_cvFolds" in P.parameters_file_drift(text.replace("# parallel jobs for the C search",
                                                                 "# jobs for the C search"))
    assert "svm_nJobs" in P.parameters_file_drift(text.replace("svm_nJobs = -1\n", ""))  # a key went missing
    assert "rf_inputResolution" in P.parameters_file_drift(text.replace("rf_inputResolution =",
                                                                        "rf_inputResoluton ="))  # the alias
    with pytest.raises(ParameterError, match="unknown parameter 'svm_cvFold' .*line"):
        P.parameters_file_drift(text.replace("svm_cvFolds = 5", "svm_cvFold = 5"))
    with pytest.raises(ParameterError, match="line .*not a plain"):
        P.value_sources(text + "import os\n")


def test_rewriting_a_users_file_keeps_its_values_and_adds_new_parameters(tmp_path: Path) -> None:
    path = tmp_path / "PARAMETERS.py"
    path.write_text("# my old file\nrootDir = '/data/x'   # mine\nrf_lrPerMb = [0.1] * 3 + [0.01]\n"
                    "svm_CVals = [\n    0.1,\n    1,\n]\n")
    before = load_parameters(parameters_file=path)
    rewritten = P.render_parameters_file(P.value_sources(path.read_text(), str(path)))
    path.write_text(rewritten)
    assert load_parameters(parameters_file=path) == before  # same values: the user's and the defaults
    assert "rf_lrPerMb = [0.1] * 3 + [0.01]" in rewritten and "rootDir = '/data/x'" in rewritten
    assert P.parameters_file_drift(rewritten) == ""


def test_readme_tables_are_replaced_between_the_markers() -> None:
    readme = f"# Title\n\nintro\n\n{P.README_BEGIN}\nold table\n{P.README_END}\n\n## Next\n"
    updated = P.readme_with_tables(readme)
    assert updated.startswith("# Title\n\nintro\n\n") and updated.endswith(f"{P.README_END}\n\n## Next\n")
    assert "old table" not in updated and "| `svm_cvFolds` | `5` |" in updated
    assert "old table" in P.readme_drift(readme) and P.readme_drift(updated) == ""
    with pytest.raises(ParameterError, match="no generated parameter tables"):
        P.readme_with_tables("# no markers\n")


def test_markdown_shows_names_paths_and_values_as_code() -> None:
    markdown = P.render_markdown()
    assert "| `rf_lrPerMb` | `[0.01] * 20 + [0.001] * 20 + [0.0001]` |" in markdown
    assert "`<rootDir>/images/<datasetName>/<class>/*.jpg`" in markdown  # not an HTML tag, not emphasis
    assert "`BING_SEARCH_V7_SUBSCRIPTION_KEY`" in markdown
    assert "each class's images" in markdown  # an apostrophe is not a quote
    for line in markdown.splitlines():
        if line.startswith("| `"):
            assert line.count(" | ") == 2, line  # three cells: no stray '|'


# --- list literals are bounded --------------------------------------------------------------------------------


@pytest.mark.parametrize("override", [
    "--svm_CVals=[1.0]*100000*3",
    "--svm_CVals=3*[1.0]*100000",
    f"--svm_CVals=[1.0]*{MAX_LIST_ITEMS}+[2.0]",
    "--rf_lrPerMb=" + ",".join(["0.1"] * (MAX_LIST_ITEMS + 1)),
    "--scrape_items=" + ",".join(["x"] * (MAX_LIST_ITEMS + 1)),
])
def test_a_list_literal_may_not_build_a_huge_list(override: str) -> None:
    with pytest.raises(ParameterError, match="10,000"):
        load_parameters([override])


def test_only_lists_are_repeated_or_joined() -> None:
    assert load_parameters([f"--svm_CVals=[1.0]*{MAX_LIST_ITEMS}"]).svm_CVals == [1.0] * MAX_LIST_ITEMS
    for text in ["'x'*1000000000", "[1]*True", "[1]*1.5", "1+2", "[1]+2", "[1]*(10**9)", "__import__('os')",
                 "(" * 500 + "1" + ")" * 500]:
        with pytest.raises((ValueError, SyntaxError, RecursionError, MemoryError)):
            literal_value(text)
    with pytest.raises(ParameterError, match="'svm_CVals' must be a list of numbers"):
        load_parameters(["--svm_CVals=['x'*1000000000]"])


def test_a_parameters_file_list_is_bounded_too(tmp_path: Path) -> None:
    path = tmp_path / "P.py"
    path.write_text("svm_CVals = [1.0] * 20000\n")
    with pytest.raises(ParameterError, match="'svm_CVals' has 20,000 items"):
        load_parameters(parameters_file=path)


# --- steps declare what they read -------------------------------------------------------------------------------


def test_step_spec_checks_its_names_and_labels_itself() -> None:
    step = StepSpec("featurize", "scripts/3_runDNN.py", "featurize", ("datasetName", "run_mbSize"))
    assert step.label == "step 3 (featurize)"
    assert StepSpec("scrape", "scripts/scrapeImages.py", "", ()).label == "scripts/scrapeImages.py (scrape)"
    with pytest.raises(ValueError, match="run_mbsize"):
        StepSpec("x", "scripts/x.py", "", ("run_mbsize",))
    with pytest.raises(ValueError, match="distinct"):
        StepSpec("x", "scripts/x.py", "", ("rootDir", "rootDir"))


def test_a_backbone_is_a_name_or_a_list_of_names_for_auto(tmp_path: Path) -> None:
    assert load_parameters(["--rf_pretrainedModelFilename=resnet34"]).rf_pretrainedModelFilename == "resnet34"
    both = ["resnet18", "efficientnet_lite0"]
    assert load_parameters(["--rf_pretrainedModelFilename=resnet18,efficientnet_lite0"]).rf_pretrainedModelFilename \
        == both  # comma-separated on the command line
    assert load_parameters(['--rf_pretrainedModelFilename=["resnet18", "efficientnet_lite0"]'],
                           classifier="auto").rf_pretrainedModelFilename == both
    file = tmp_path / "P.py"
    file.write_text('rf_pretrainedModelFilename = ["resnet18", "efficientnet_lite0"]\nclassifier = "auto"\n')
    assert load_parameters(parameters_file=file).rf_pretrainedModelFilename == both
    for bad, message in ((["resnet18", "notANetwork"], "'notANetwork' must name a backbone"),
                         (["resnet18", "resnet18"], "twice"), ([], "non-empty list"), ([18], "a string or a list"),
                         (18, "a string or a list")):
        with pytest.raises(ParameterError, match=message):
            load_parameters(rf_pretrainedModelFilename=bad)
    assert P.spelled_default("rf_pretrainedModelFilename") == '"resnet18"'


def test_the_recipe_tta_and_auto_parameters_are_checked() -> None:
    params = load_parameters()
    assert (params.rf_recipe, params.run_tta, params.classifier) == ("lpft", "none", "svm")
    assert load_parameters(["--classifier=auto", "--auto_classifiers=svm,dnn"]).auto_classifiers == ["svm", "dnn"]
    for override, message in (("--rf_recipe=lp", "allowed values"), ("--run_tta=rotate", "allowed values"),
                              ("--auto_classifiers=svm,svm", "distinct"), ("--rf_ftBackboneLrFactor=2", r"\(0, 1\]"),
                              ("--rf_earlyStopPatience=-1", ">= 0")):
        with pytest.raises(ParameterError, match=message):
            load_parameters([override])
