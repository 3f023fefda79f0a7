"""Every parameter, declared once; ``PARAMETERS.py`` loaded into one validated, typed :class:`Parameters`.

``PARAMETERS.py`` is a flat file of plain assignments that a user edits (the
nanoGPT configurator model). The declarations below are the one description
of each parameter: type, default, allowed values, help and the section it
belongs to (with the section's introduction). The comments of
``PARAMETERS.py`` and the README's parameter tables are rendered from them
(:func:`render_parameters_file`, :func:`render_markdown`;
``python -m imgclass parameters --write-file|--write-readme|--check``), and
tests fail when either drifts, so the three can no longer disagree.

The user's file and ``--key=value`` overrides are checked against the
declarations: an unknown key, a wrong type or a value outside the allowed set
is a :class:`ParameterError` naming the key and what is allowed, before any
work starts. No other module reads parameters from globals: scripts load a
:class:`Parameters` once and pass it (or the values they need) down.

Only the standard library and the (torch-free) backbone registry are imported,
so a script answers ``--help`` and a bad value at once.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import os
import re
import runpy
import sys
import textwrap
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from imgclass.errors import ParameterError
from imgclass.model.registry import check_backbone_value

#: The dataset bundled under ``resources/demoImages`` and installed by script 0.
DEMO_DATASET_NAME = "tuxpaintStamps"

#: Default dedup_maxDistance for dedup_hashSize=16, measured on the demo photos
#: (see docs/scraping.md and benchmarks/dedup_threshold.py).
DEFAULT_DEDUP_MAX_DISTANCE = 16

#: The classifiers of step 4 (``classifier``; 'auto' chooses among them).
CLASSIFIERS = ("svm", "dnn", "svmDnnRefined")

#: Keys the original CNTK tutorial spelled differently: alias -> canonical name.
ALIASES = {"rf_inputResoluton": "rf_inputResolution"}

#: The parameters file's name; its folder is the project folder (``resources/`` lives there).
PARAMETERS_FILE_NAME = "PARAMETERS.py"
#: Environment variable naming another parameters file (e.g. for tests or runs).
PARAMETERS_FILE_ENV = "IMGCLASS_PARAMETERS"

#: The most items a list parameter may hold. A list literal such as ``[1.0]*100000*3`` is refused
#: before it is built: no parameter needs more, and a typo must not cost gigabytes.
MAX_LIST_ITEMS = 10_000


@dataclass(frozen=True)
class Section:
    """A group of parameters: a heading in ``PARAMETERS.py`` and in the README, and what to know first."""

    title: str
    intro: str = ""


DATA = Section("Data", "Images live in <rootDir>/images/<datasetName>/<class>/*.jpg; intermediate files go to "
                       "<rootDir>/proc/<datasetName>/, plots and metrics to <rootDir>/results/<datasetName>/. "
                       "A custom dataset is this one change.")
DNN = Section("Pretrained DNN and its refinement",
              "rf_pretrainedModelFilename names a backbone: 'resnet18', 'resnet34', 'resnet50', 'efficientnet_lite0', "
              "any torchvision classification model (e.g. 'convnext_tiny', 'vit_b_16'; docs/backbones.md), "
              "or a .pth state dict whose file name starts with one (e.g. resnet18-f37072fd.pth); 'smallcnn' trains from "
              "scratch only (rf_pretrained=False). Weights are looked "
              "for in resources/models/, then torch hub's cache, then downloaded; 'efficientnet_lite0' ships with its "
              "pip package (works offline). Refinement (classifier 'dnn' or 'svmDnnRefined') trains a new last layer, "
              "and the backbone unless rf_boFreezeWeights, on the training images.")
RECIPE = Section("Refinement recipe, test-time augmentation, automatic choice",
                 "rf_recipe = 'lpft' (the default) first fits the new last layer on the frozen network's features "
                 "(the linear probe: seconds), then fine-tunes the whole network from it (rf_ft*); 'original' is "
                 "the CNTK tutorial's recipe (rf_maxEpochs, rf_lrPerMb, rf_dropoutRate). Both stop early when the "
                 "validation part of the training set stops improving. classifier = 'auto' tries every backbone in "
                 "rf_pretrainedModelFilename (a name or a list) with each of auto_classifiers and keeps the best "
                 "on the validation part of the training set; the test set is used once, at the end "
                 "(docs/refinement.md).")
SVM = Section("Linear SVM", "C is chosen by cross-validation on the training set; the test set plays no part in "
                            "the choice.")
RUN = Section("Running the DNN", "Where and how the network runs: step 3, refinement, serving and batch scoring.")
EVALUATION = Section("Evaluation")
DOWNLOAD = Section("Downloading images (script 0)")
SCRAPE = Section("Scraping new images (scripts/scrapeImages.py)",
                 "Searches Bing Image Search for every '<item> <attribute>' and saves the top results in "
                 "images/<datasetName>/<attribute>/ (guide: docs/scraping.md). The key is read from the environment "
                 "variable BING_SEARCH_V7_SUBSCRIPTION_KEY, never from a file. Bing Search v7 was retired in August "
                 "2025: point bing_endpoint at a compatible service.")
DEDUP = Section("Removing duplicates (scripts/removeDuplicates.py)",
                "Near-duplicates are moved to images/<datasetName>_duplicates/, never deleted; step 1 warns about "
                "near-duplicates that the split puts into both training and test.")
SERVE = Section("Serving the model (scripts/6_deploy.py)",
                "Serves the trained model over HTTP: a REST API and a web page at / (guide: docs/deployment.md). If "
                "the environment variable IMGCLASS_API_KEY is set, requests need the header 'Authorization: Bearer "
                "<key>' (the key is never written to a file or a log).")
LIMITS = Section("Service limits (scripts/6_deploy.py)",
                 "Bounds that keep hostile or slow clients from taking the service down or filling its memory: "
                 "image size, concurrent decoding, connections and how long a client may take to send a request. "
                 "Threat model: SECURITY.md; a reverse proxy in front: docs/deployment.md.")
CLIENT = Section("The service's client (scripts/6_callWebservice.py)")
BATCH = Section("Batch scoring (scripts/7_batchScore.py)",
                "Classifies every image under a folder into a CSV and a results database (SQLite by default, "
                "PostgreSQL the same way).")
LABELING = Section("Labeling, least sure first (the /label and /results pages of scripts/6_deploy.py)",
                   "The service's labeling page queues the images of the unlabeled folder, and labeled images the "
                   "model disagrees with, least sure first; each decision moves the file (never deletes it), is "
                   "logged in images/<datasetName>_labeling.csv and can be undone. The results page browses batch "
                   "scoring's database (guide: docs/labeling.md).")
SPARK = Section("Running on Apache Spark (steps 3 and 7)",
                "With run_engine = 'spark', step 3 and batch scoring run the same featurizer and classifier on a "
                "Spark cluster, or on this machine's cores (guide: docs/spark.md). Needs pip install "
                "'imgclass[spark]' (PySpark, PyArrow) and a Java runtime; nothing else changes.")
TRACKING = Section("Run tracking and the model registry (MLflow)",
                   "Each run of steps 1-5 is one MLflow run (parameters, metrics, plots, the model), and each "
                   "trained model a new version of a registered model (guide: docs/tracking.md). The default store "
                   "is a SQLite file under rootDir and needs no server: compare runs with mlflow ui "
                   "--backend-store-uri sqlite:///data/mlflow.db. A tracking failure is a warning, never a lost "
                   "result.")


def _tracking_uri(value: str) -> str | None:
    if value in ("", "auto") or re.fullmatch(r"databricks(-uc)?|[A-Za-z][A-Za-z0-9+.-]*:.+", value):
        return None
    return "must be 'auto', '' (tracking off) or a URI such as sqlite:///path/mlflow.db or http://host:5000"


def _param(section: Section, default: Any, help: str, choices: Sequence[Any] | None = None,
           check: Callable[[Any], str | None] | None = None, spelled: str | None = None) -> Any:
    """Declare one parameter: its section, default, help text, allowed values and extra check.

    ``spelled`` is how the default is written in ``PARAMETERS.py`` when plain
    ``repr`` would hide its shape (``[0.01] * 20 + [0.001]``).
    """
    metadata = {"section": section, "help": help, "choices": tuple(choices) if choices else None, "check": check,
                "spelled": spelled}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def _positive(value: float) -> str | None:
    return None if value > 0 else "must be > 0"


def _non_negative(value: float) -> str | None:
    return None if value >= 0 else "must be >= 0"


def _open_unit_interval(value: float) -> str | None:
    return None if 0 < value < 1 else "must be strictly between 0 and 1"


def _dropout(value: float) -> str | None:
    return None if 0 <= value < 1 else "must be in [0, 1)"


def _resolution(value: int) -> str | None:
    return None if 32 <= value <= 1024 else "must be between 32 and 1024 pixels"


def _positive_list(values: list[float]) -> str | None:
    if not values:
        return "must be a non-empty list"
    if any(v <= 0 for v in values):
        return "every value must be > 0"
    return None


def _string_list(values: list[str]) -> str | None:
    if any(not v.strip() or re.search(r"[\t\r\n]", v) for v in values):
        return "every value must be a non-empty string without tabs or line breaks"
    return None


def _http_url(value: str) -> str | None:
    return None if re.match(r"https?://[^/\s]+", value) else "must be an http:// or https:// URL"


def _dataset_name(value: str) -> str | None:
    if not value or value in (".", "..") or re.search(r"[/\\]", value):
        return "must be a plain folder name (no slashes), e.g. 'myDataset'"
    return None


def _spark_master(value: str) -> str | None:
    return None if not re.search(r"\s", value) else "must be a master URL without spaces, e.g. 'local[*]'"


def _spark_conf(values: list[str]) -> str | None:
    keys = [v.split("=", 1)[0].strip() for v in values]
    if any("=" not in v or not key or re.search(r"\s", key) for v, key in zip(values, keys)):
        return "every value must be 'key=value' with a key without spaces, e.g. 'spark.executor.memory=8g'"
    if len(set(keys)) != len(keys):
        return "sets a key twice"
    return None


def _backbone_or_list(value: str | list[str]) -> str | None:
    """A backbone name or path, or a non-empty list of them (``classifier = 'auto'`` tries each)."""
    if isinstance(value, str):
        return check_backbone_value(value)
    if not value:
        return "must be a backbone name or a non-empty list of them"
    problems = [f"{name!r} {message}" for name in value if (message := check_backbone_value(name))]
    if problems:
        return "lists a name that is no backbone: " + problems[0]
    return None if len(set(value)) == len(value) else "lists a backbone twice"


def _auto_classifiers(values: list[str]) -> str | None:
    if not values or any(v not in CLASSIFIERS for v in values) or len(set(values)) != len(values):
        return f"must be a non-empty list of distinct values from {', '.join(repr(a) for a in CLASSIFIERS)}"
    return None


def _device(value: str) -> str | None:
    if re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", value):
        return None
    return "must be one of 'auto', 'cpu', 'cuda', 'cuda:N', 'mps'"


@dataclass(frozen=True)
class StepSpec:
    """What one step (or script) is: its name, the script that runs it, and the parameters it reads.

    Declared next to the step's function (``STEP = StepSpec(...)``), so the
    list of what a step reads lives beside the code that reads it: ``--help``
    shows these parameters, an override of any other one is warned about
    (:mod:`imgclass.cli`), and a test runs the step with a recording stand-in
    for :class:`Parameters` to check the list against what it really reads.
    """

    name: str
    script: str
    summary: str
    reads: tuple[str, ...]

    def __post_init__(self) -> None:
        # A misspelt name here is a bug in the step's module, not a user error: fail where it is written.
        unknown = [name for name in self.reads if name not in _specs()]
        if unknown or len(set(self.reads)) != len(self.reads):
            raise ValueError(f"StepSpec {self.name!r}: reads must be distinct parameter names; unknown: {unknown}")

    @property
    def label(self) -> str:
        """How messages name the step: ``step 3 (featurize)``, or ``scripts/scrapeImages.py (scrape)``."""
        number = re.match(r"(\d+)_", Path(self.script).name)
        return f"step {number.group(1)} ({self.name})" if number else f"{self.script} ({self.name})"


@dataclass(frozen=True)
class Parameters:
    """Every parameter of the pipeline, declared once: type, default, allowed values, help and section.

    Field names keep the original tutorial's camelCase spelling so that users
    of the CNTK sample recognise them. Declaration order is the order of
    ``PARAMETERS.py`` and of the README's tables.
    """

    datasetName: str = _param(DATA, DEMO_DATASET_NAME, "dataset folder name under <rootDir>/images/ (the default is "
                                                       "the bundled demo set)", check=_dataset_name)
    rootDir: str = _param(DATA, "data", "root of images/, proc/ and results/; a relative path is relative to the "
                                        "parameters file's folder")
    classifier: str = _param(DATA, "svm", "'svm': fixed DNN features + linear SVM; 'dnn': the refined DNN itself; "
                                          "'svmDnnRefined': SVM on the refined DNN's features; 'auto': the best of "
                                          "auto_classifiers x backbones on the training set",
                             choices=(*CLASSIFIERS, "auto"))
    ratioTrainTest: float = _param(DATA, 0.75, "fraction of each class's images used for training",
                                   check=_open_unit_interval)
    imagesSplitBy: str = _param(DATA, "filename", "'filename': split individual files; 'subdir': keep each "
                                                  "sub-folder of a class whole (all training or all test)",
                                choices=("filename", "subdir"))
    randomSeed: int = _param(DATA, 0, "seed of every random choice (split, CV folds, training)")

    rf_pretrainedModelFilename: str | list[str] = _param(
        DNN, "resnet18", "backbone: 'resnet18', 'resnet34', 'resnet50', 'efficientnet_lite0' (works offline), any "
                         "torchvision classification model name (e.g. 'convnext_tiny', 'vit_b_16'; see "
                         "docs/backbones.md), 'smallcnn' (a small CNN with no pretrained weights: with "
                         "rf_pretrained=False), or a path to a .pth state dict whose file name starts with one; "
                         "with classifier 'auto' also a list of them (on the command line comma-separated)",
        check=_backbone_or_list)
    rf_pretrained: bool = _param(DNN, True, "True: start from the backbone's pretrained (ImageNet) weights; False: "
                                           "random weights, trained from scratch in step 2 with rf_recipe "
                                           "'original' (needed for 'smallcnn'; docs/from_scratch.md)")
    rf_inputResolution: int = _param(DNN, 224, "network input width = height in pixels (the original's misspelling "
                                               "rf_inputResoluton is accepted)", check=_resolution)
    rf_resizeMode: str = _param(DNN, "pad", "'pad': scale the longer side and pad to a square with the mean colour "
                                            "(the whole image is kept); 'crop': scale the shorter side and "
                                            "centre-crop", choices=("pad", "crop"))
    rf_dropoutRate: float = _param(DNN, 0.5, "dropout before the new classification layer", check=_dropout)
    rf_mbSize: int = _param(DNN, 16, "refinement minibatch size", check=_positive)
    rf_maxEpochs: int = _param(DNN, 45, "refinement epochs (0 = no refinement)", check=_non_negative)
    rf_maxTrainImages: int = _param(DNN, 0, "training images drawn per epoch (0 = all)", check=_non_negative)
    rf_lrPerMb: list[float] = _param(DNN, [0.01] * 20 + [0.001] * 20 + [0.0001],
                                     "learning rate per epoch; the last value repeats", check=_positive_list,
                                     spelled="[0.01] * 20 + [0.001] * 20 + [0.0001]")
    rf_momentumPerMb: float = _param(DNN, 0.9, "SGD momentum", check=_non_negative)
    rf_l2RegWeight: float = _param(DNN, 0.0005, "L2 weight decay", check=_non_negative)
    rf_optimizer: str = _param(DNN, "sgd", "refinement's optimizer: 'sgd' (with rf_momentumPerMb) or 'adam' (the "
                                          "Keras CNN tutorial's, for training from scratch; wants rates near "
                                          "0.001); both with rf_l2RegWeight", choices=("sgd", "adam"))
    rf_boFreezeWeights: bool = _param(DNN, False, "True: train only the new last layer, keep the backbone fixed")
    rf_boBalanceTrainingSet: bool = _param(DNN, False, "True: draw every class equally often")
    rf_backboneLrFactor: float = _param(DNN, 1.0, "the backbone learns at this fraction of rf_lrPerMb, the new "
                                                  "last layer at the full rate (1 = one rate, as the original)",
                                        check=lambda v: None if 0 < v <= 1 else "must be in (0, 1]")
    rf_validationFraction: float = _param(DNN, 0.1, "part of the TRAINING set held out to pick the best epoch "
                                                    "(never the test set; 0 = keep the last epoch)",
                                          check=lambda v: None if 0 <= v < 1 else "must be in [0, 1)")
    rf_augRandomCrop: bool = _param(DNN, True, "training augmentation: scale and pad with a margin, then a random "
                                               "crop")
    rf_augHorizontalFlip: bool = _param(DNN, True, "training augmentation: random left-right flips; set False where a "
                                                   "mirror image changes the class (digits, letters, left/right "
                                                   "views; docs/refinement.md)")
    rf_augColorJitter: float = _param(DNN, 0.2, "training augmentation: brightness/contrast/saturation jitter "
                                                "strength (0 = off)",
                                      check=lambda v: None if 0 <= v < 1 else "must be in [0, 1)")

    rf_recipe: str = _param(RECIPE, "lpft", "'lpft': linear probe on frozen features, then fine-tune everything "
                                            "from it; 'original': the tutorial's recipe (random head, whole "
                                            "network from the start)", choices=("lpft", "original"))
    rf_ftEpochs: int = _param(RECIPE, 20, "'lpft': fine-tuning epochs, the length of the warm-up + cosine schedule "
                                         "(0 = the linear probe only)", check=_non_negative)
    rf_ftLearningRate: float = _param(RECIPE, 0.002, "'lpft': the new last layer's peak learning rate (SGD with "
                                                    "rf_momentumPerMb, rf_l2RegWeight; the backbone's is "
                                                    "rf_ftBackboneLrFactor times it)", check=_positive)
    rf_ftBackboneLrFactor: float = _param(RECIPE, 1.0, "'lpft': the backbone learns at this fraction of "
                                                       "rf_ftLearningRate (1 = the same rate as the last layer)",
                                          check=lambda v: None if 0 < v <= 1 else "must be in (0, 1]")
    rf_warmupEpochs: float = _param(RECIPE, 1.0, "'lpft': epochs of linear learning-rate warm-up",
                                    check=_non_negative)
    rf_earlyStopPatience: int = _param(RECIPE, 5, "stop refining after this many epochs without a better "
                                                  "validation result ('lpft': loss, then error; 'original': error, "
                                                  "then loss; 0 = never; both recipes; 'lpft' not in the first "
                                                  "half of rf_ftEpochs)",
                                       check=_non_negative)
    run_tta: str = _param(RECIPE, "none", "test-time augmentation, stored with the DNN by step 2 and applied "
                                          "wherever it runs (step 3, serving, batch scoring, Spark): 'none'; "
                                          "'flip' (the mean of the features of the image and of its mirror; "
                                          "twice the compute); 'scales' (the mean over the image as it is and "
                                          "enlarged 1.5x; 3.25x the compute; pays most at low "
                                          "rf_inputResolution); 'flip+scales' (all four; 6.5x)",
                          choices=("none", "flip", "scales", "flip+scales"))
    auto_classifiers: list[str] = _param(RECIPE, ["svm", "dnn", "svmDnnRefined"],
                                         "classifier 'auto': the modes tried with each backbone",
                                         check=_auto_classifiers)

    svm_CVals: list[float] = _param(SVM, [1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0],
                                    "SVM regularisation values C to choose from", check=_positive_list,
                                    spelled="[1e-4, 1e-3, 1e-2, 0.1, 1, 10, 100]")
    svm_boL2Normalize: bool = _param(SVM, True, "L2-normalise each feature vector before the SVM")
    svm_cvFolds: int = _param(SVM, 5, "stratified cross-validation folds on the training set (at most the smallest "
                                      "class's size)", check=lambda v: None if v >= 2 else "must be >= 2")
    svm_nJobs: int = _param(SVM, -1, "parallel jobs for the C search (-1 = all cores)",
                            check=lambda v: None if v == -1 or v >= 1 else "must be -1 or >= 1")
    svm_maxRowsForCV: int = _param(SVM, 20_000, "with more training images than this, C is chosen on a stratified "
                                                "sample of this many, then fitted once on all of them (and "
                                                "calibrated on a held-out 1/svm_cvFolds of this many); 0 = always "
                                                "cross-validate on all (cost and accuracy: BENCHMARKS.md)",
                                   check=_non_negative)

    run_mbSize: int = _param(RUN, 32, "featurization batch size", check=_positive)
    run_device: str = _param(RUN, "auto", "'auto' (CUDA, then Apple MPS, then CPU), 'cpu', 'cuda', 'cuda:N', 'mps'",
                             check=_device)
    run_workers: int = _param(RUN, -1, "worker processes (-1 = auto, 0 = none): on a CPU, step 3 runs one per core "
                                       "(up to 8), each decoding and featurizing its own batches; with a GPU they "
                                       "only decode images (measurements: BENCHMARKS.md)",
                              check=lambda v: None if v >= -1 else "must be -1 or >= 0")
    run_precision: str = _param(RUN, "auto", "numeric precision of the forward pass: 'auto' (bf16 autocast on CPUs "
                                             "with native bf16, i.e. AVX512-BF16 or AMX; fp16 on GPUs; else fp32), "
                                             "'fp32', 'bf16', 'fp16' (their accuracy: BENCHMARKS.md)",
                                choices=("auto", "fp32", "bf16", "fp16"))

    eval_numExampleImages: int = _param(EVALUATION, 24, "test images shown in the examples grid (wrong ones first)",
                                        check=_non_negative)

    download_urlsFile: str = _param(DOWNLOAD, "", "TSV of 'label<TAB>url' lines to download into "
                                                  "images/<datasetName>/ ('' = install the bundled demo images)")
    download_timeoutSeconds: float = _param(DOWNLOAD, 20.0, "seconds each image download may take in all "
                                                                "(connecting, every read, the whole body)",
                                            check=_positive)
    download_maxImageSide: int = _param(DOWNLOAD, 1000, "downloaded images are shrunk so that the longer side is at "
                                                        "most this many pixels", check=_positive)

    bing_endpoint: str = _param(SCRAPE, "https://api.bing.microsoft.com/v7.0/images/search",
                                "Bing Image Search v7 endpoint, or a compatible one", check=_http_url)
    scrape_items: list[str] = _param(SCRAPE, ["shirt", "pants", "dress", "skirt", "sweater", "scarf", "shoes"],
                                     "things to search for; each is combined with every attribute",
                                     check=_string_list)
    scrape_attributes: list[str] = _param(SCRAPE, ["striped", "dotted", "leopard"],
                                          "the classes: query '<item> <attribute>', saved under "
                                          "images/<datasetName>/<attribute>/", check=_string_list)
    scrape_queriesFile: str = _param(SCRAPE, "", "TSV of 'label<TAB>query' lines used instead of items x "
                                                 "attributes ('' = items x attributes)")
    scrape_imagesPerQuery: int = _param(SCRAPE, 50, "search results downloaded per query (the top N)",
                                        check=_positive)
    scrape_countPerPage: int = _param(SCRAPE, 50, "results asked for per search call (Bing allows at most 150)",
                                      check=lambda v: None if 1 <= v <= 150 else "must be between 1 and 150")
    scrape_safeSearch: str = _param(SCRAPE, "Moderate", "Bing's adult-content filter",
                                    choices=("Off", "Moderate", "Strict"))
    scrape_mkt: str = _param(SCRAPE, "en-US", "market of the search, e.g. 'en-US', 'de-DE' ('' = Bing chooses)",
                             check=lambda v: None if re.fullmatch(r"([a-z]{2}-[A-Z]{2})?", v)
                             else "must look like 'en-US', or be ''")
    scrape_imageType: str = _param(SCRAPE, "Photo", "Bing's imageType filter ('' = any)",
                                   choices=("", "Photo", "Clipart", "Line", "Shopping", "Transparent",
                                            "AnimatedGif"))
    scrape_license: str = _param(SCRAPE, "", "Bing's license filter ('' = no filter)",
                                 choices=("", "All", "Any", "Public", "Share", "ShareCommercially",
                                          "Modify", "ModifyCommercially"))
    scrape_useThumbnails: bool = _param(SCRAPE, False, "when an image itself cannot be downloaded, save Bing's "
                                                       "(smaller) thumbnail of it instead")
    scrape_allowPrivateHosts: bool = _param(SCRAPE, False, "allow URLs (image search and step 0's URL lists) "
                                                           "whose host is a private, loopback or link-local address "
                                                           "(off: protects your network)")
    scrape_timeoutSeconds: float = _param(SCRAPE, 20.0, "seconds each search call and image download may take in all",
                                          check=_positive)
    scrape_maxBytes: int = _param(SCRAPE, 20_000_000, "larger downloads are abandoned", check=_positive)
    scrape_minSecondsBetweenCalls: float = _param(SCRAPE, 0.5, "rate limit: seconds between two requests to the "
                                                               "same host, the search API included",
                                                  check=_non_negative)
    scrape_maxRetries: int = _param(SCRAPE, 4, "retries of a request answered 429 or 5xx (waits Retry-After, else "
                                               "1, 2, 4, ... s)", check=_non_negative)

    dedup_hashSize: int = _param(DEDUP, 16, "dhash size: a hash has dedup_hashSize x dedup_hashSize bits",
                                 check=lambda v: None if 2 <= v <= 64 else "must be between 2 and 64")
    dedup_maxDistance: int = _param(DEDUP, DEFAULT_DEDUP_MAX_DISTANCE,
                                    "images whose dhashes differ in at most this many bits are near-duplicates "
                                    "(0 = identical hashes only; how the default was chosen: docs/scraping.md)",
                                    check=_non_negative)
    dedup_crossClass: str = _param(DEDUP, "keepOne", "near-duplicates under different classes: 'keepOne' (like "
                                                     "within a class), 'moveAll' (the label is ambiguous), "
                                                     "'report' (move none)",
                                   choices=("keepOne", "moveAll", "report"))

    deploy_host: str = _param(SERVE, "127.0.0.1", "address the service listens on ('0.0.0.0' = every network "
                                                  "interface, e.g. inside a container)")
    deploy_port: int = _param(SERVE, 8000, "TCP port of the service",
                              check=lambda v: None if 1 <= v <= 65535 else "must be between 1 and 65535")
    deploy_maxRequestBytes: int = _param(SERVE, 20_000_000, "larger request bodies are refused with HTTP 413",
                                         check=_positive)
    deploy_maxImages: int = _param(SERVE, 16, "more images in one request are refused with HTTP 413",
                                   check=_positive)
    deploy_topK: int = _param(SERVE, 5, "labels returned per image by /predict (and shown by the web page)",
                              check=_positive)

    images_maxPixels: int = _param(LIMITS, 40_000_000, "largest image the service decodes, in pixels as decoded "
                                                       "(a baseline JPEG counts at the reduced scale it is decoded "
                                                       "at); larger ones get HTTP 400 before any pixel is decoded "
                                                       "(the pipeline's files may have up to Pillow's 89.5 MP)",
                                   check=_positive)
    deploy_maxConcurrentDecodes: int = _param(LIMITS, 2, "requests decoded and classified at the same time; the "
                                                         "others wait their turn (each holds one decoded image at a "
                                                         "time)", check=_positive)
    deploy_maxConnections: int = _param(LIMITS, 64, "connections served at once; a request on one more is "
                                                    "answered 503 (waiting requests hold their bodies in memory: "
                                                    "at most this many times deploy_maxRequestBytes)",
                                        check=_positive)
    deploy_keepAliveSeconds: int = _param(LIMITS, 5, "an idle kept-alive connection is closed after this many "
                                                     "seconds", check=_positive)
    deploy_headerTimeoutSeconds: float = _param(LIMITS, 10.0, "a request's line and headers must arrive within "
                                                              "this many seconds of the connection opening (or of "
                                                              "the previous response), else the connection is "
                                                              "closed", check=_positive)
    deploy_bodyTimeoutSeconds: float = _param(LIMITS, 60.0, "a request body must arrive in full within this many "
                                                            "seconds of its headers, else HTTP 408",
                                              check=_positive)

    deploy_url: str = _param(CLIENT, "", "service the client calls ('' = http://<deploy_host>:<deploy_port>)",
                             check=lambda v: None if v == "" else _http_url(v))
    deploy_clientImage: str = _param(CLIENT, "", "image the client sends ('' = a bundled demo image)")
    deploy_clientRepeats: int = _param(CLIENT, 10, "requests the client sends, to time the round trip",
                                       check=_positive)

    batch_inputDir: str = _param(BATCH, "", "folder whose images (recursively) are classified "
                                            "('' = images/<datasetName>/; a relative path is from the current folder)")
    batch_outputCsv: str = _param(BATCH, "", "CSV written ('' = results/<datasetName>/batchScores.csv)")
    batch_database: str = _param(BATCH, "", "results database the rows are added to: a SQLAlchemy URL (e.g. "
                                            "postgresql://user:password@host/dbname) or a SQLite file path "
                                            "('' = results/<datasetName>/batchScores.sqlite)")

    label_unlabeledFolder: str = _param(LABELING, "", "folder under <rootDir>/images/ whose images wait for a "
                                                      "label ('' = <datasetName>_unlabeled)",
                                        check=lambda v: None if v == "" else _dataset_name(v))
    label_reviewLabeled: str = _param(LABELING, "disagree", "labeled images queued too: 'disagree' (the model "
                                                            "gives another class), 'all' (every one not yet "
                                                            "confirmed, e.g. a scraped set), 'none'",
                                      choices=("disagree", "all", "none"))
    label_uncertainty: str = _param(LABELING, "margin", "how unsure the model is: 'margin' (1 - the gap between "
                                                        "the two most probable classes) or 'entropy' of the "
                                                        "calibrated probabilities", choices=("margin", "entropy"))
    label_queueSize: int = _param(LABELING, 200, "images the labeling page holds at most at a time (the least "
                                                 "sure)", check=_positive)
    label_retrainArgs: list[str] = _param(LABELING, [], "--key=value overrides for the page's retraining (python "
                                                        "-m imgclass run with the service's parameters file), e.g. "
                                                        "['--rf_pretrainedModelFilename=efficientnet_lite0']",
                                          check=_string_list)

    run_engine: str = _param(SPARK, "local", "where steps 3 and 7 run: 'local' (this machine's processes) or "
                                             "'spark' (a Spark session at spark_master)", choices=("local", "spark"))
    spark_master: str = _param(SPARK, "local[*]", "Spark master: 'local[*]' (every core here), 'local[N]', "
                                                  "'spark://host:7077', 'yarn', 'k8s://https://host:443', a Spark "
                                                  "Connect 'sc://host:15002', or '' (the one spark-submit or the "
                                                  "running session set)", check=_spark_master)
    spark_partitions: int = _param(SPARK, 0, "tasks the image list is cut into (0 = one per core Spark offers, "
                                             "more so that none holds over 10,000 images)", check=_non_negative)
    spark_conf: list[str] = _param(SPARK, [], "Spark settings as spark-submit's --conf takes them, 'key=value' "
                                              "(e.g. ['spark.executor.memory=8g']; on the command line "
                                              "comma-separated)", check=_spark_conf)
    spark_batchOutput: str = _param(SPARK, "", "Parquet table batch scoring on Spark writes ('' = "
                                               "results/<datasetName>/batchScores.parquet); batch_inputDir may be a "
                                               "folder, any URL Spark reads, or a Parquet table with a path (and "
                                               "content) column")

    mlflow_trackingUri: str = _param(TRACKING, "auto", "where runs and models are recorded: 'auto' = "
                                                       "$MLFLOW_TRACKING_URI if set, else "
                                                       "sqlite:///<rootDir>/mlflow.db with artifacts in "
                                                       "<rootDir>/mlartifacts/; '' = no tracking; or a URI "
                                                       "(sqlite:///path.db, http(s)://host:port of an MLflow server)",
                                     check=_tracking_uri)
    mlflow_experimentName: str = _param(TRACKING, "", "MLflow experiment the runs go to ('' = datasetName)")
    mlflow_registeredModelName: str = _param(TRACKING, "", "registered model each trained model becomes a new "
                                                           "version of ('' = imgclass-<datasetName>)")
    deploy_modelUri: str = _param(TRACKING, "", "model scripts/6_deploy.py serves and scripts/7_batchScore.py "
                                                "applies: '' = the files steps 2-4 wrote to proc/<datasetName>/; or "
                                                "an MLflow model: models:/<name>/<version>, models:/<name>@champion, "
                                                "runs:/<run id>/model, or a model folder")

    # --- not user parameters: where the values came from -------------------
    parametersFile: str = field(default="", metadata={"internal": True})
    #: the project folder (its ``resources/``): the scripts' checkout, else the parameters file's folder
    projectDir: str = field(default="", metadata={"internal": True})

    @property
    def root_path(self) -> Path:
        """``rootDir`` as an absolute path (relative to the parameters file's folder)."""
        root = Path(os.path.expanduser(self.rootDir))
        if not root.is_absolute():
            root = (Path(self.parametersFile).parent if self.parametersFile else self.project_dir) / root
        return root.resolve()

    @property
    def project_dir(self) -> Path:
        """Where ``resources/`` lives: the scripts' project, else the parameters file's folder (else the
        current folder)."""
        if self.projectDir:
            return Path(self.projectDir)
        return Path(self.parametersFile).resolve().parent if self.parametersFile else Path.cwd()

    @property
    def models_dir(self) -> Path:
        """``resources/models/``: weight files placed there are used instead of a download."""
        return self.project_dir / "resources" / "models"

    @property
    def demo_images_dir(self) -> Path:
        """``resources/demoImages/``: the bundled demo dataset (one folder per class)."""
        return self.project_dir / "resources" / "demoImages"

    def replace(self, **changes: Any) -> "Parameters":
        """Return a copy with ``changes`` applied and validated."""
        values = {**self.as_dict(), **changes}
        values["parametersFile"] = self.parametersFile
        values["projectDir"] = self.projectDir
        return build_parameters(values, source="replace()")

    def as_dict(self) -> dict[str, Any]:
        """The user parameters as a plain dict (for metadata files and ``--help``)."""
        return {name: getattr(self, name) for name in parameter_names()}



_SPECS: dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(Parameters)
                                        if not f.metadata.get("internal")}
_TYPE_HINTS = typing.get_type_hints(Parameters)


def _specs() -> dict[str, dataclasses.Field]:
    return _SPECS


def parameter_names() -> list[str]:
    """All user parameter names, in declaration order."""
    return list(_SPECS)


def parameter_help(name: str) -> str:
    """The one-line help of a parameter, as declared."""
    return _SPECS[name].metadata["help"]


def parameter_section(name: str) -> Section:
    """The section a parameter is declared in."""
    return _SPECS[name].metadata["section"]


def sections() -> list[tuple[Section, list[str]]]:
    """The sections in declaration order, each with its parameter names."""
    grouped: dict[Section, list[str]] = {}
    for name in _SPECS:
        grouped.setdefault(parameter_section(name), []).append(name)
    return list(grouped.items())


def _type_name(annotation: Any) -> str:
    """The type with its article, for messages: 'an integer', 'a list of numbers'."""
    return {str: "a string", int: "an integer", float: "a number", bool: "a boolean",
            list[str]: "a list of strings", str | list[str]: "a string or a list of strings"}.get(
        annotation, "a list of numbers")


def _did_you_mean(name: str) -> str:
    close = difflib.get_close_matches(name, parameter_names() + list(ALIASES), n=3)
    return f" Did you mean {', '.join(close)}?" if close else ""


def _shorten(text: str, limit: int = 80) -> str:
    """``text`` for an error message: a pasted megabyte must not come back in the message."""
    return text if len(text) <= limit else f"{text[:limit - 20]}...({len(text)} characters)"


def coerce_value(name: str, value: Any) -> Any:
    """Check ``value`` against the declaration of ``name`` and return it in its declared type.

    Integers are accepted where a number (float) is declared; nothing else is
    converted silently, so ``ratioTrainTest = "0.75"`` in the file is an error.
    """
    spec = _SPECS[name]
    annotation = _TYPE_HINTS[name]
    expected = _type_name(annotation)
    problem = f"parameter '{name}' must be {expected}, got {_shorten(repr(value))} ({type(value).__name__})"
    if annotation is bool:
        if not isinstance(value, bool):
            raise ParameterError(problem)
    elif annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParameterError(problem)
    elif annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ParameterError(problem)
        value = float(value)
    elif annotation is str:
        if not isinstance(value, str):
            raise ParameterError(problem)
    elif annotation == str | list[str]:  # one string, or a list of them (kept as given: one is not a list of one)
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, (str, list)) or (isinstance(value, list)
                                                  and any(not isinstance(v, str) for v in value)):
            raise ParameterError(problem)
        if isinstance(value, list) and len(value) > MAX_LIST_ITEMS:
            raise ParameterError(f"parameter '{name}' has {len(value):,} items; at most {MAX_LIST_ITEMS:,} "
                                 "are allowed")
    else:  # a list of strings or of numbers; one value is a list of one
        item_types: tuple[type, ...] = (str,) if annotation == list[str] else (int, float)
        if isinstance(value, item_types) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ParameterError(problem)
        if len(value) > MAX_LIST_ITEMS:
            raise ParameterError(f"parameter '{name}' has {len(value):,} items; at most {MAX_LIST_ITEMS:,} "
                                 "are allowed")
        if any(isinstance(v, bool) or not isinstance(v, item_types) for v in value):
            raise ParameterError(problem)
        value = list(value) if annotation == list[str] else [float(v) for v in value]
    choices = spec.metadata.get("choices")
    if choices and value not in choices:
        allowed = ", ".join(repr(c) for c in choices)
        raise ParameterError(f"parameter '{name}' is {_shorten(repr(value))}; allowed values: {allowed}")
    check = spec.metadata.get("check")
    if check:
        message = check(value)
        if message:
            raise ParameterError(f"parameter '{name}' {message} (got {_shorten(repr(value))})")
    return value


def parse_override(text: str) -> tuple[str, Any]:
    """Parse one ``--key=value`` argument into the canonical key and a typed value.

    Strings need no quotes (``--datasetName=myData``); booleans accept
    true/false/yes/no/1/0; lists are Python or comma-separated
    (``--svm_CVals=[0.1,1]`` or ``--svm_CVals=0.1,1``).
    """
    key = override_key(text)
    raw = text.split("=", 1)[1]
    annotation = _TYPE_HINTS[key]
    if annotation is str:
        value: Any = raw
    elif annotation is bool:
        lowered = raw.strip().lower()
        if lowered in ("true", "yes", "1", "on"):
            value = True
        elif lowered in ("false", "no", "0", "off"):
            value = False
        else:
            raise ParameterError(f"parameter '{key}' must be true or false, got {_shorten(repr(raw))}")
    elif annotation == list[str] and not raw.strip().startswith(("[", "(")):
        value = [part.strip() for part in raw.split(",") if part.strip()]
    elif annotation == str | list[str] and not raw.strip().startswith(("[", "(")):  # a,b is a list; a alone is not
        value = [part.strip() for part in raw.split(",") if part.strip()] if "," in raw else raw
    else:
        try:
            if annotation is list[float] and not raw.strip().startswith(("[", "(")):  # 0.1,1,10
                parts = [part.strip() for part in raw.split(",") if part.strip()]
                if len(parts) > MAX_LIST_ITEMS:
                    raise ListTooLongError(f"the list would have {len(parts):,} items; at most "
                                           f"{MAX_LIST_ITEMS:,} are allowed")
                value = [ast.literal_eval(part) for part in parts]
            else:
                value = literal_value(raw)
        except ListTooLongError as exc:
            raise ParameterError(f"parameter '{key}': {exc}") from None
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            raise ParameterError(
                f"parameter '{key}' must be {_type_name(annotation)}, got {_shorten(repr(raw))}") from None
    return key, coerce_value(key, value)


def override_key(text: str) -> str:
    """The canonical parameter name of one ``--key=value`` argument (the value is not read)."""
    if not text.startswith("--") or "=" not in text:
        raise ParameterError(f"cannot read argument {_shorten(repr(text))}: overrides are written --key=value")
    return canonical_key(text[2:].split("=", 1)[0])


class ListTooLongError(ValueError):
    """A list literal would have more than :data:`MAX_LIST_ITEMS` items."""


def literal_value(text: str) -> Any:
    """Evaluate a Python literal, plus list repetition and concatenation, without running code.

    So ``--rf_lrPerMb=[0.01]*20+[0.001]`` works on the command line as it does
    in PARAMETERS.py; names, calls and attribute access are rejected. A list
    is never built longer than :data:`MAX_LIST_ITEMS` items (the size is
    worked out before ``*`` or ``+`` runs), and only lists are repeated, so a
    short argument cannot make a huge object.
    """

    def evaluate(node: ast.AST) -> Any:
        if isinstance(node, (ast.List, ast.Tuple)):
            return [evaluate(element) for element in node.elts]
        if not isinstance(node, ast.BinOp) or not isinstance(node.op, (ast.Add, ast.Mult)):
            return ast.literal_eval(node)
        left, right = evaluate(node.left), evaluate(node.right)
        if isinstance(node.op, ast.Add):
            if isinstance(left, list) and isinstance(right, list):
                return _bounded(left, len(left) + len(right)) + right
            raise ValueError("'+' joins two lists")
        items, count = (left, right) if isinstance(left, list) else (right, left)
        if not isinstance(items, list) or not isinstance(count, int) or isinstance(count, bool):
            raise ValueError("'*' repeats a list a whole number of times")
        return _bounded(items, len(items) * max(count, 0)) * count

    def _bounded(items: list[Any], size: int) -> list[Any]:
        if size > MAX_LIST_ITEMS:
            raise ListTooLongError(f"the list would have {size:,} items; at most {MAX_LIST_ITEMS:,} are allowed")
        return items

    return evaluate(ast.parse(text.strip(), mode="eval").body)


def canonical_key(key: str) -> str:
    """Map an alias to its canonical name; raise a clear error for an unknown key."""
    key = ALIASES.get(key, key)
    if key not in _SPECS:
        raise ParameterError(f"unknown parameter '{_shorten(key, 60)}'.{_did_you_mean(key)} "
                             "Run the script with --help to list the parameters.")
    return key


def build_parameters(values: Mapping[str, Any], source: str) -> Parameters:
    """Validate a mapping of parameter values (aliases allowed) into :class:`Parameters`."""
    checked: dict[str, Any] = {}
    for key, value in values.items():
        if key in ("parametersFile", "projectDir"):
            checked[key] = str(value)
            continue
        name = canonical_key(key) if key in ALIASES or key in _SPECS else None
        if name is None:
            raise ParameterError(f"unknown parameter '{key}' in {source}.{_did_you_mean(key)}")
        if name in checked:
            alias = key if key in ALIASES else next(a for a, n in ALIASES.items() if n == name)
            raise ParameterError(f"both '{alias}' and '{name}' are set in {source}; keep only '{name}'")
        checked[name] = coerce_value(name, value)
    return Parameters(**checked)


def read_parameters_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Execute a parameters file and return its public, plain-value assignments."""
    path = Path(path)
    if not path.is_file():
        raise ParameterError(f"parameters file not found: {path}")
    try:
        namespace = runpy.run_path(str(path))
    except Exception as exc:  # a syntax or name error in the user's file
        raise ParameterError(f"cannot read parameters file {path}: {exc}") from exc
    return {key: value for key, value in namespace.items()
            if not key.startswith("_") and not isinstance(value, (types.ModuleType, types.FunctionType, type))}


def find_parameters_file(start: str | os.PathLike[str] | None = None) -> Path:
    """The first ``PARAMETERS.py`` in ``start`` (default: the current folder) or one of its parents.

    The package is not tied to a checkout: scripts name their project's file
    explicitly, notebooks and a user's own code find it from where they run.
    """
    folder = Path(start or Path.cwd()).resolve()
    for candidate in (folder, *folder.parents):
        if (candidate / PARAMETERS_FILE_NAME).is_file():
            return candidate / PARAMETERS_FILE_NAME
    raise ParameterError(f"no {PARAMETERS_FILE_NAME} in {folder} or its parents: run from the project folder, "
                         f"pass --parametersFile=PATH or set ${PARAMETERS_FILE_ENV}")


def resolve_parameters_file(parameters_file: str | os.PathLike[str] | None = None,
                            project_dir: str | os.PathLike[str] | None = None) -> Path:
    """Which file to read: ``parameters_file``, else ``$IMGCLASS_PARAMETERS``, else the project's
    ``PARAMETERS.py``, else the first one in the current folder or its parents."""
    default = Path(project_dir) / PARAMETERS_FILE_NAME if project_dir is not None else None
    return Path(parameters_file or os.environ.get(PARAMETERS_FILE_ENV) or default or find_parameters_file()).resolve()


def load_parameters(overrides: Iterable[str] = (), parameters_file: str | os.PathLike[str] | None = None,
                    project_dir: str | os.PathLike[str] | None = None, **values: Any) -> Parameters:
    """Load the parameters file, then apply ``--key=value`` overrides and keyword values.

    Parameters
    ----------
    overrides:
        Command-line style strings ``--key=value``.
    parameters_file:
        The file to read; default ``$IMGCLASS_PARAMETERS``, else the first ``PARAMETERS.py`` in the
        current folder or one of its parents (see :func:`find_parameters_file`).
    project_dir:
        The project whose ``resources/`` to use (the scripts pass their checkout); its
        ``PARAMETERS.py`` is the default file after ``$IMGCLASS_PARAMETERS``.
    **values:
        Typed overrides, applied last (handy for tests and notebooks).
    """
    path = resolve_parameters_file(parameters_file, project_dir)
    merged = build_parameters(read_parameters_file(path), source=str(path)).as_dict()
    for text in overrides:
        key, value = parse_override(text)
        merged[key] = value
    for key, value in values.items():
        merged[canonical_key(key)] = value
    merged["parametersFile"] = str(path)
    merged["projectDir"] = str(Path(project_dir).resolve()) if project_dir is not None else ""
    return build_parameters(merged, source="the overrides")


# --- the command line ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CommandLine:
    """A script's arguments sorted out: ``--parametersFile=``, ``--key=value`` overrides, ``--help``."""

    parameters_file: str | None
    overrides: tuple[str, ...]
    wants_help: bool

    @classmethod
    def parse(cls, argv: Sequence[str]) -> "CommandLine":
        parameters_file = None
        overrides = []
        wants_help = False
        for arg in argv:
            if arg in ("-h", "--help"):
                wants_help = True
            elif arg.startswith("--parametersFile="):
                parameters_file = arg.split("=", 1)[1]
            else:
                overrides.append(arg)
        return cls(parameters_file, tuple(overrides), wants_help)

    def override_keys(self) -> list[str]:
        """The canonical names of the overridden parameters, each once, in order."""
        return list(dict.fromkeys(override_key(text) for text in self.overrides))


def format_help(params: Parameters, used: Sequence[str] | None = None, description: str = "") -> str:
    """Text for ``--help``: the parameters a script uses with their current values and help."""
    names = list(used) if used else parameter_names()
    lines = [description.strip(), ""] if description else []
    lines += [f"Parameters (from {params.parametersFile}; override with --key=value):", ""]
    width = max(len(n) for n in names)
    for name in names:
        lines.append(f"  --{name:<{width}} = {getattr(params, name)!r}")
        lines += textwrap.wrap(parameter_help(name), 100, initial_indent=" " * (width + 7),
                               subsequent_indent=" " * (width + 7))
    lines += ["", "  --parametersFile=PATH  read another parameters file instead of PARAMETERS.py"]
    return "\n".join(lines)


def parse_command_line(argv: Sequence[str], used: Sequence[str] | None = None,
                       description: str = "", project_dir: str | os.PathLike[str] | None = None) -> Parameters:
    """Parameters for a script: ``--parametersFile=``, ``--key=value`` overrides and ``--help``.

    ``--help`` prints the parameters the script uses (``used``) with their
    current values, after the overrides, and exits. Scripts call this through
    :func:`imgclass.cli.parse_step`, which also warns about overrides the step
    does not read.
    """
    command_line = CommandLine.parse(argv)
    params = load_parameters(command_line.overrides, command_line.parameters_file, project_dir)
    if command_line.wants_help:
        print(format_help(params, used, description))
        sys.exit(0)
    return params


# --- the declarations rendered: PARAMETERS.py's comments and the README's tables ---------------------------

#: Width of the comment lines written into ``PARAMETERS.py``.
COMMENT_WIDTH = 100
#: The top of ``PARAMETERS.py``.
FILE_HEADER = """\
# PARAMETERS.py: the one file a user edits. Every script reads it.
#
# Plain assignments only. Each value is checked when a script starts (type and
# allowed values); every script also takes overrides on the command line,
# e.g.  python scripts/4_trainSVM.py --datasetName=myData --svm_cvFolds=3
# and lists what it uses with --help. `python -m imgclass run` runs steps 1-5.
#
# Change the values freely. The comments are written from the declarations in
# imgclass/parameters.py: `python -m imgclass parameters --write-file` rewrites
# them (and adds parameters that are new) keeping your values.
"""
#: The lines around the README's generated parameter tables.
README_BEGIN = ("<!-- BEGIN parameter tables: generated from the declarations in libraries/imgclass/parameters.py "
                "by `python -m imgclass parameters --write-readme`; edit those, not these tables -->")
README_END = "<!-- END parameter tables -->"


def _spell(value: Any) -> str:
    """A value as Python source, the way a person writes it: double quotes, ``20_000_000``."""
    if isinstance(value, list):
        return "[" + ", ".join(_spell(v) for v in value) + "]"
    if isinstance(value, str):
        return f'"{value}"' if '"' not in value and "\\" not in value and value.isprintable() else repr(value)
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 100_000:
        return f"{value:_}"
    return repr(value)


def spelled_default(name: str) -> str:
    """The default of ``name`` as written in ``PARAMETERS.py``."""
    spec = _SPECS[name]
    return spec.metadata["spelled"] or _spell(spec.default_factory() if spec.default is dataclasses.MISSING
                                             else spec.default)


def _comment(text: str) -> list[str]:
    return textwrap.wrap(text, COMMENT_WIDTH - 2, initial_indent="# ", subsequent_indent="# ",
                         break_on_hyphens=False)


def render_parameters_file(values: Mapping[str, str] | None = None) -> str:
    """``PARAMETERS.py``: the header, each section's introduction, each parameter's help above it.

    ``values`` maps names to how their values are written (source text, as
    :func:`value_sources` reads them from a user's file); the others get
    their declared defaults. The layout does not depend on the values, so a
    changed value never makes the file drift from the declarations.
    """
    values = values or {}
    lines = FILE_HEADER.splitlines()
    for section, names in sections():
        rule = f"# --- {section.title} "
        lines += ["", rule + "-" * max(3, COMMENT_WIDTH - len(rule))]
        if section.intro:
            lines += _comment(section.intro) + [""]
        for name in names:
            lines += _comment(parameter_help(name))
            lines.append(f"{name} = {values.get(name, spelled_default(name))}")
    return "\n".join(lines) + "\n"


def value_sources(text: str, source: str = PARAMETERS_FILE_NAME) -> dict[str, str]:
    """How each parameter's value is written in a parameters file: ``{name: source text}``.

    Only ``name = value`` statements of declared parameters (aliases allowed)
    can be kept when the file is rewritten; anything else is a
    :class:`ParameterError` naming its line.
    """
    try:
        module = ast.parse(text, filename=source)
    except SyntaxError as exc:
        raise ParameterError(f"cannot read {source}: {exc}") from None
    found: dict[str, str] = {}
    for statement in module.body:
        target = statement.targets[0] if isinstance(statement, ast.Assign) and len(statement.targets) == 1 else None
        if not isinstance(target, ast.Name):
            raise ParameterError(f"{source}, line {statement.lineno}: not a plain 'name = value' assignment, "
                                 "so the file cannot be rewritten; move it elsewhere")
        if target.id not in _SPECS and target.id not in ALIASES:
            raise ParameterError(f"unknown parameter '{target.id}' in {source}, line {statement.lineno}."
                                 f"{_did_you_mean(target.id)}")
        name = canonical_key(target.id)
        if name in found:
            raise ParameterError(f"'{name}' is set twice in {source} (line {statement.lineno}); keep one")
        found[name] = ast.get_source_segment(text, statement.value) or ""
    return found


def parameters_file_drift(text: str, source: str = PARAMETERS_FILE_NAME) -> str:
    """Where a parameters file's comments or keys differ from the declarations, as a diff ('' = none).

    The file is compared with :func:`render_parameters_file` of its own
    values: a user's changed value is no drift; an edited comment, a missing,
    renamed or reordered key is.
    """
    expected = render_parameters_file(value_sources(text, source))
    return _diff(text, expected, source)


def _diff(actual: str, expected: str, source: str, max_lines: int = 60) -> str:
    diff = list(difflib.unified_diff(actual.splitlines(), expected.splitlines(), f"{source} (now)",
                                     f"{source} (from the declarations)", lineterm="", n=1))
    if len(diff) > max_lines:
        diff = diff[:max_lines] + [f"... ({len(diff) - max_lines} more diff lines)"]
    return "\n".join(diff)


def _markdown(text: str) -> str:
    """Help text for a Markdown table cell: names, paths and quoted values as code, the rest escaped."""
    names = "|".join(sorted([*_SPECS, *ALIASES], key=len, reverse=True))
    special = re.compile(r"(?<![\w'])'[^'\n]*'(?!\w)"  # a quoted value: 'svm' (not the ' of "class's")
                         r"|[^\s'(),;]*[/<>*][^\s'(),;]*(?<![.:])"  # a path: <rootDir>/images/, *.jpg
                         r"|\b[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+\b"  # an environment variable
                         rf"|\b(?:{names})\b")
    parts, last = [], 0
    for match in special.finditer(text):
        if re.fullmatch(r"\w+(/\w+)+", match.group()):  # words with slashes (brightness/contrast): text
            continue
        token = match.group()
        linked = re.fullmatch(r"docs/[\w.-]+\.md", token)  # a guide: a link
        parts += [_escape_markdown(text[last:match.start()]),
                  f"[{token}]({token})" if linked else "`" + token.replace("|", "\\|") + "`"]
        last = match.end()
    return "".join(parts) + _escape_markdown(text[last:])


def _escape_markdown(text: str) -> str:
    return re.sub(r"([\\|<>*`_])", r"\\\1", text)


def render_markdown() -> str:
    """The README's parameter tables: one per section, with the section's introduction."""
    lines: list[str] = []
    for section, names in sections():
        lines += [f"### {section.title}", ""]
        if section.intro:
            lines += [_markdown(section.intro), ""]
        lines += ["| parameter | default | meaning |", "|---|---|---|"]
        lines += [f"| `{name}` | `{spelled_default(name)}` | {_markdown(parameter_help(name))} |" for name in names]
        lines.append("")
    return "\n".join(lines)


def _readme_parts(readme: str, source: str) -> tuple[str, str, str]:
    begin, end = readme.find(README_BEGIN), readme.find(README_END)
    if begin < 0 or end < begin:
        raise ParameterError(f"{source} has no generated parameter tables: put the lines\n{README_BEGIN}\n"
                             f"{README_END}\nwhere they belong")
    return readme[:begin + len(README_BEGIN)], readme[begin + len(README_BEGIN):end], readme[end:]


def readme_with_tables(readme: str, source: str = "README.md") -> str:
    """``readme`` with the text between :data:`README_BEGIN` and :data:`README_END` rendered anew."""
    head, _, tail = _readme_parts(readme, source)
    return f"{head}\n{render_markdown()}{tail}"


def readme_drift(readme: str, source: str = "README.md") -> str:
    """Where the README's parameter tables differ from the declarations, as a diff ('' = none)."""
    return _diff(readme, readme_with_tables(readme, source), source)
