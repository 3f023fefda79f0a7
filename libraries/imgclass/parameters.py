"""Load ``PARAMETERS.py`` into one validated, typed :class:`Parameters` object.

``PARAMETERS.py`` is a flat file of plain assignments that a user edits (the
nanoGPT configurator model). This module is the only place that reads it:
every parameter is declared once below, with its type, allowed values and a
one-line help, and the user's file and ``--key=value`` command-line overrides
are checked against those declarations. An unknown key, a wrong type or a
value outside the allowed set is a :class:`ParameterError` naming the key and
what is allowed, before any work starts.

No other module reads parameters from globals: scripts load a
:class:`Parameters` once and pass it (or the values they need) down.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import os
import re
import runpy
import sys
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

#: Keys the original CNTK tutorial spelled differently: alias -> canonical name.
ALIASES = {"rf_inputResoluton": "rf_inputResolution"}

#: The parameters file's name; its folder is the project folder (``resources/`` lives there).
PARAMETERS_FILE_NAME = "PARAMETERS.py"
#: Environment variable naming another parameters file (e.g. for tests or runs).
PARAMETERS_FILE_ENV = "IMGCLASS_PARAMETERS"


def _param(default: Any, help: str, choices: Sequence[Any] | None = None,
           check: Callable[[Any], str | None] | None = None) -> Any:
    """Declare one parameter: its default, help text, allowed values and extra check."""
    metadata = {"help": help, "choices": tuple(choices) if choices else None, "check": check}
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


def _non_negative_list(values: list[float]) -> str | None:
    if not values:
        return "must be a non-empty list"
    if any(v < 0 for v in values):
        return "every value must be >= 0"
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


def _device(value: str) -> str | None:
    if re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", value):
        return None
    return "must be one of 'auto', 'cpu', 'cuda', 'cuda:N', 'mps'"




@dataclass(frozen=True)
class StepSpec:
    """What one step (or script) is: its name, the script that runs it, and the parameters it reads.

    Declared next to the step's function (``STEP = StepSpec(...)``), so the
    list of what a step reads lives beside the code that reads it; ``--help``
    shows these parameters, an override of any other one is warned about, and
    a test checks the list against what the function really reads.
    """

    name: str
    script: str
    summary: str
    reads: tuple[str, ...]


@dataclass(frozen=True)
class Parameters:
    """Every parameter of the pipeline; see ``PARAMETERS.py`` for their meaning.

    Field names keep the original tutorial's camelCase spelling so that users
    of the CNTK sample recognise them.
    """

    # --- data -------------------------------------------------------------
    datasetName: str = _param(DEMO_DATASET_NAME, "dataset folder name under <rootDir>/images/",
                              check=_dataset_name)
    rootDir: str = _param("data", "root of images/, proc/ and results/ (relative paths are "
                                  "relative to the parameters file's folder)")
    classifier: str = _param("svm", "'svm': fixed DNN features + linear SVM; 'dnn': refined DNN; "
                                    "'svmDnnRefined': SVM on refined DNN features",
                             choices=("svm", "dnn", "svmDnnRefined"))
    ratioTrainTest: float = _param(0.75, "fraction of each class's images used for training",
                                   check=_open_unit_interval)
    imagesSplitBy: str = _param("filename", "split individual files, or whole subdirectories "
                                            "of each class folder", choices=("filename", "subdir"))
    randomSeed: int = _param(0, "seed of every random choice (split, CV folds, training)")

    # --- DNN backbone and refinement --------------------------------------
    rf_pretrainedModelFilename: str = _param(
        "resnet18", "backbone name or path to a .pth state dict named after it", check=check_backbone_value)
    rf_inputResolution: int = _param(224, "network input size in pixels (square)", check=_resolution)
    rf_resizeMode: str = _param("pad", "'pad': scale the longer side and pad to a square (keeps the "
                                       "whole image); 'crop': scale the shorter side and centre-crop",
                                choices=("pad", "crop"))
    rf_dropoutRate: float = _param(0.5, "dropout before the new classification layer", check=_dropout)
    rf_mbSize: int = _param(16, "refinement minibatch size", check=_positive)
    rf_maxEpochs: int = _param(45, "refinement epochs (0 = no refinement)", check=_non_negative)
    rf_maxTrainImages: int = _param(0, "training images drawn per epoch (0 = all)", check=_non_negative)
    rf_lrPerMb: list[float] = _param([0.01] * 20 + [0.001] * 20 + [0.0001],
                                     "learning rate per epoch; the last value repeats", check=_positive_list)
    rf_momentumPerMb: float = _param(0.9, "SGD momentum", check=_non_negative)
    rf_l2RegWeight: float = _param(0.0005, "L2 weight decay", check=_non_negative)
    rf_boFreezeWeights: bool = _param(False, "train only the new head, keep the backbone fixed")
    rf_boBalanceTrainingSet: bool = _param(False, "resample so every class is drawn equally often")
    rf_backboneLrFactor: float = _param(1.0, "the backbone learns at this fraction of rf_lrPerMb (the new "
                                             "head at the full rate); 1 = the original's single rate",
                                        check=lambda v: None if 0 < v <= 1 else "must be in (0, 1]")
    rf_validationFraction: float = _param(0.1, "part of the TRAINING set held out to pick the best epoch "
                                               "(0 = keep the last epoch)",
                                          check=lambda v: None if 0 <= v < 1 else "must be in [0, 1)")
    rf_augRandomCrop: bool = _param(True, "augmentation: scale and pad with a margin, then a random crop")
    rf_augHorizontalFlip: bool = _param(True, "augmentation: random left-right flips")
    rf_augColorJitter: float = _param(0.2, "augmentation: brightness/contrast/saturation jitter strength "
                                           "(0 = off)", check=lambda v: None if 0 <= v < 1 else "must be in [0, 1)")

    # --- SVM ----------------------------------------------------------------
    svm_CVals: list[float] = _param([1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0],
                                    "SVM regularisation values C to choose from", check=_positive_list)
    svm_boL2Normalize: bool = _param(True, "L2-normalise each feature vector before the SVM")
    svm_cvFolds: int = _param(5, "stratified cross-validation folds on the training set to choose C",
                              check=lambda v: None if v >= 2 else "must be >= 2")
    svm_nJobs: int = _param(-1, "parallel jobs for the C search (-1 = all cores)",
                            check=lambda v: None if v == -1 or v >= 1 else "must be -1 or >= 1")

    # --- running the DNN ----------------------------------------------------
    run_mbSize: int = _param(32, "featurization batch size", check=_positive)
    run_device: str = _param("auto", "'auto' (cuda, then mps, then cpu), 'cpu', 'cuda', 'cuda:N', 'mps'",
                             check=_device)
    run_workers: int = _param(-1, "image-decoding worker processes (-1 = auto, 0 = in the main process)",
                              check=lambda v: None if v >= -1 else "must be -1 or >= 0")
    run_precision: str = _param("auto", "numeric precision of the forward pass: 'auto' = bf16 autocast on CPUs "
                                        "with native bf16 (AVX512-BF16/AMX), fp16 on GPUs, else fp32",
                                choices=("auto", "fp32", "bf16", "fp16"))

    # --- evaluation ---------------------------------------------------------
    eval_numExampleImages: int = _param(24, "test images shown in the examples grid", check=_non_negative)

    # --- downloading (script 0) -------------------------------------------
    download_urlsFile: str = _param("", "TSV of 'label<TAB>url' lines to download into "
                                        "images/<datasetName>/ ('' = install the bundled demo images)")
    download_timeoutSeconds: float = _param(20.0, "timeout of each image download", check=_positive)
    download_maxImageSide: int = _param(1000, "downloaded images are shrunk so the longer side is at most this",
                                        check=_positive)

    # --- scraping new images (Bing) and removing duplicates ------------------
    bing_endpoint: str = _param("https://api.bing.microsoft.com/v7.0/images/search",
                                "Bing Image Search v7 endpoint, or a compatible one; the key is read from "
                                "the environment variable BING_SEARCH_V7_SUBSCRIPTION_KEY", check=_http_url)
    scrape_items: list[str] = _param(["shirt", "pants", "dress", "skirt", "sweater", "scarf", "shoes"],
                                     "things to search for; each is combined with every attribute",
                                     check=_string_list)
    scrape_attributes: list[str] = _param(["striped", "dotted", "leopard"],
                                          "the classes: query '<item> <attribute>', saved under "
                                          "images/<datasetName>/<attribute>/", check=_string_list)
    scrape_queriesFile: str = _param("", "TSV of 'label<TAB>query' lines used instead of items x attributes "
                                         "('' = items x attributes)")
    scrape_imagesPerQuery: int = _param(50, "search results downloaded per query (the top N)",
                                        check=_positive)
    scrape_countPerPage: int = _param(50, "results asked for per search call (Bing allows at most 150)",
                                      check=lambda v: None if 1 <= v <= 150 else "must be between 1 and 150")
    scrape_safeSearch: str = _param("Moderate", "Bing's adult-content filter",
                                    choices=("Off", "Moderate", "Strict"))
    scrape_mkt: str = _param("en-US", "market of the search, e.g. 'en-US', 'de-DE' ('' = Bing chooses)",
                             check=lambda v: None if re.fullmatch(r"([a-z]{2}-[A-Z]{2})?", v)
                             else "must look like 'en-US', or be ''")
    scrape_imageType: str = _param("Photo", "Bing's imageType filter ('' = any)",
                                   choices=("", "Photo", "Clipart", "Line", "Shopping", "Transparent",
                                            "AnimatedGif"))
    scrape_license: str = _param("", "Bing's license filter ('' = no filter)",
                                 choices=("", "All", "Any", "Public", "Share", "ShareCommercially",
                                          "Modify", "ModifyCommercially"))
    scrape_useThumbnails: bool = _param(False, "when an image itself cannot be downloaded, save Bing's "
                                               "(smaller) thumbnail of it instead")
    scrape_allowPrivateHosts: bool = _param(False, "allow image URLs whose host is a private, loopback or "
                                                   "link-local address (off: protects your network)")
    scrape_timeoutSeconds: float = _param(20.0, "timeout of each search call and image download",
                                          check=_positive)
    scrape_maxBytes: int = _param(20_000_000, "larger downloads are abandoned", check=_positive)
    scrape_minSecondsBetweenCalls: float = _param(0.5, "rate limit: seconds between two requests to the same "
                                                       "host, the search API included", check=_non_negative)
    scrape_maxRetries: int = _param(4, "retries of a request answered 429 or 5xx (waits Retry-After, "
                                       "else 1, 2, 4, ... s)", check=_non_negative)
    dedup_hashSize: int = _param(16, "dhash size: a hash has hash_size**2 bits",
                                 check=lambda v: None if 2 <= v <= 64 else "must be between 2 and 64")
    dedup_maxDistance: int = _param(DEFAULT_DEDUP_MAX_DISTANCE, "images whose dhashes differ in at most this "
                                    "many bits are near-duplicates (0 = identical hashes only)",
                                    check=_non_negative)
    dedup_crossClass: str = _param("keepOne", "near-duplicates under different classes: 'keepOne' (like "
                                              "within a class), 'moveAll' (the label is ambiguous), "
                                              "'report' (move none)",
                                   choices=("keepOne", "moveAll", "report"))

    # --- deployment: REST service, client and batch scoring (scripts 6-7) ---
    deploy_host: str = _param("127.0.0.1", "address the service listens on ('0.0.0.0' = every network "
                                           "interface, e.g. inside a container)")
    deploy_port: int = _param(8000, "TCP port of the service",
                              check=lambda v: None if 1 <= v <= 65535 else "must be between 1 and 65535")
    deploy_maxRequestBytes: int = _param(20_000_000, "larger request bodies are refused with HTTP 413",
                                         check=_positive)
    deploy_maxImages: int = _param(16, "more images in one request are refused with HTTP 413", check=_positive)
    deploy_topK: int = _param(5, "labels returned per image by /predict (and shown by the web page)",
                              check=_positive)
    deploy_url: str = _param("", "service the client script calls ('' = http://<deploy_host>:<deploy_port>)",
                             check=lambda v: None if v == "" else _http_url(v))
    deploy_clientImage: str = _param("", "image the client script sends ('' = a bundled demo image)")
    deploy_clientRepeats: int = _param(10, "requests the client script sends, to time round trips",
                                       check=_positive)
    batch_inputDir: str = _param("", "folder whose images (recursively) script 7 classifies "
                                     "('' = images/<datasetName>/)")
    batch_outputCsv: str = _param("", "CSV written by script 7 ('' = results/<datasetName>/batchScores.csv)")
    batch_database: str = _param("", "SQLite database script 7 adds its rows to "
                                     "('' = results/<datasetName>/batchScores.sqlite)")

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


def _specs() -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(Parameters) if not f.metadata.get("internal")}


def parameter_names() -> list[str]:
    """All user parameter names, in declaration order."""
    return list(_specs())


_TYPE_HINTS = typing.get_type_hints(Parameters)


def _type_name(annotation: Any) -> str:
    """The type with its article, for messages: 'an integer', 'a list of numbers'."""
    return {str: "a string", int: "an integer", float: "a number", bool: "a boolean",
            list[str]: "a list of strings"}.get(annotation, "a list of numbers")


def _did_you_mean(name: str) -> str:
    close = difflib.get_close_matches(name, parameter_names() + list(ALIASES), n=3)
    return f" Did you mean {', '.join(close)}?" if close else ""


def coerce_value(name: str, value: Any) -> Any:
    """Check ``value`` against the declaration of ``name`` and return it in its declared type.

    Integers are accepted where a number (float) is declared; nothing else is
    converted silently, so ``ratioTrainTest = "0.75"`` in the file is an error.
    """
    spec = _specs()[name]
    annotation = _TYPE_HINTS[name]
    expected = _type_name(annotation)
    problem = f"parameter '{name}' must be {expected}, got {value!r} ({type(value).__name__})"
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
    elif annotation == list[str]:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)) or any(not isinstance(v, str) for v in value):
            raise ParameterError(problem)
        value = list(value)
    else:  # list[float]
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)) or any(
                isinstance(v, bool) or not isinstance(v, (int, float)) for v in value):
            raise ParameterError(problem)
        value = [float(v) for v in value]
    choices = spec.metadata.get("choices")
    if choices and value not in choices:
        allowed = ", ".join(repr(c) for c in choices)
        raise ParameterError(f"parameter '{name}' is {value!r}; allowed values: {allowed}")
    check = spec.metadata.get("check")
    if check:
        message = check(value)
        if message:
            raise ParameterError(f"parameter '{name}' {message} (got {value!r})")
    return value


def parse_override(text: str) -> tuple[str, Any]:
    """Parse one ``--key=value`` argument into the canonical key and a typed value.

    Strings need no quotes (``--datasetName=myData``); booleans accept
    true/false/yes/no/1/0; lists are Python or comma-separated
    (``--svm_CVals=[0.1,1]`` or ``--svm_CVals=0.1,1``).
    """
    if not text.startswith("--") or "=" not in text:
        raise ParameterError(f"cannot read argument {text!r}: overrides are written --key=value")
    key, raw = text[2:].split("=", 1)
    key = canonical_key(key)
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
            raise ParameterError(f"parameter '{key}' must be true or false, got {raw!r}")
    elif annotation == list[str] and not raw.strip().startswith(("[", "(")):
        value = [part.strip() for part in raw.split(",") if part.strip()]
    else:
        try:
            value = literal_value(raw) if annotation is not list[float] or raw.strip().startswith(
                ("[", "(")) else [literal_value(part) for part in raw.split(",") if part.strip()]
        except (ValueError, SyntaxError, TypeError):
            raise ParameterError(
                f"parameter '{key}' must be {_type_name(annotation)}, got {raw!r}") from None
    return key, coerce_value(key, value)


def literal_value(text: str) -> Any:
    """Evaluate a Python literal, plus list repetition and concatenation, without running code.

    So ``--rf_lrPerMb=[0.01]*20+[0.001]`` works on the command line as it does
    in PARAMETERS.py; names, calls and attribute access are rejected.
    """

    def evaluate(node: ast.AST) -> Any:
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
            left, right = evaluate(node.left), evaluate(node.right)
            if isinstance(node.op, ast.Mult) and isinstance(left, list) != isinstance(right, list):
                count = right if isinstance(left, list) else left
                if not isinstance(count, int) or isinstance(count, bool) or not 0 <= count <= 100_000:
                    raise ValueError("a list can only be repeated a non-negative integer number of times")
            return left + right if isinstance(node.op, ast.Add) else left * right
        if isinstance(node, (ast.List, ast.Tuple)):
            return [evaluate(element) for element in node.elts]
        return ast.literal_eval(node)

    return evaluate(ast.parse(text.strip(), mode="eval").body)


def canonical_key(key: str) -> str:
    """Map an alias to its canonical name; raise a clear error for an unknown key."""
    key = ALIASES.get(key, key)
    if key not in _specs():
        raise ParameterError(f"unknown parameter '{key}'.{_did_you_mean(key)} "
                             "Run the script with --help to list the parameters.")
    return key


def build_parameters(values: Mapping[str, Any], source: str) -> Parameters:
    """Validate a mapping of parameter values (aliases allowed) into :class:`Parameters`."""
    checked: dict[str, Any] = {}
    for key, value in values.items():
        if key in ("parametersFile", "projectDir"):
            checked[key] = str(value)
            continue
        name = canonical_key(key) if key in ALIASES or key in _specs() else None
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
    default = Path(project_dir) / PARAMETERS_FILE_NAME if project_dir is not None else None
    path = Path(parameters_file or os.environ.get(PARAMETERS_FILE_ENV) or default or find_parameters_file()).resolve()
    merged = build_parameters(read_parameters_file(path), source=str(path)).as_dict()
    for text in overrides:
        key, value = parse_override(text)
        merged[key] = value
    for key, value in values.items():
        merged[canonical_key(key)] = value
    merged["parametersFile"] = str(path)
    merged["projectDir"] = str(Path(project_dir).resolve()) if project_dir is not None else ""
    return build_parameters(merged, source="the overrides")


def format_help(params: Parameters, used: Sequence[str] | None = None, description: str = "") -> str:
    """Text for ``--help``: the parameters a script uses with their current values."""
    names = list(used) if used else parameter_names()
    lines = [description.strip(), ""] if description else []
    lines += [f"Parameters (from {params.parametersFile}; override with --key=value):", ""]
    width = max(len(n) for n in names)
    for name in names:
        spec = _specs()[name]
        lines.append(f"  --{name:<{width}} = {getattr(params, name)!r}")
        lines.append(f"    {'':<{width}}   {spec.metadata['help']}")
    lines += ["", "  --parametersFile=PATH  read another parameters file instead of PARAMETERS.py"]
    return "\n".join(lines)


def parse_command_line(argv: Sequence[str], used: Sequence[str] | None = None,
                       description: str = "", project_dir: str | os.PathLike[str] | None = None) -> Parameters:
    """Parameters for a script: ``--parametersFile=``, ``--key=value`` overrides and ``--help``.

    ``--help`` prints the parameters the script uses (``used``) with their
    current values, after the overrides, and exits.
    """
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
    params = load_parameters(overrides, parameters_file, project_dir)
    if wants_help:
        print(format_help(params, used, description))
        sys.exit(0)
    return params
