"""Where every artifact of a dataset lives: one place that names the files.

Each pipeline step reads its inputs and writes its outputs through a
:class:`DatasetLayout`, so the next step, a notebook or a user's own code can
find them. The formats are documented in the README.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from imgclass.errors import MissingArtifactError
from imgclass.parameters import Parameters

#: Optional list of test images inside a dataset folder (see :mod:`imgclass.data.splits`).
DEDICATED_TEST_FILE = "dedicatedTestImages.tsv"
#: The image search's log inside a dataset folder (see :mod:`imgclass.data.scraping`).
SCRAPE_MANIFEST_FILE = "scrapeManifest.tsv"
#: Files of the toolkit's own that may sit in a dataset folder: they are not images, nor skipped user files.
TOOLKIT_FILES = frozenset({DEDICATED_TEST_FILE, SCRAPE_MANIFEST_FILE})


@dataclass(frozen=True)
class DatasetLayout:
    """Folders and files of one dataset under a root directory."""

    root: Path
    dataset: str

    @classmethod
    def from_parameters(cls, params: Parameters) -> "DatasetLayout":
        """The layout of ``params.datasetName`` under ``params.rootDir``."""
        return cls(params.root_path, params.datasetName)

    @property
    def images_dir(self) -> Path:
        """``<root>/images/<dataset>/<class>/...``: the user's images (never modified)."""
        return self.root / "images" / self.dataset

    @property
    def proc_dir(self) -> Path:
        return self.root / "proc" / self.dataset

    @property
    def results_dir(self) -> Path:
        return self.root / "results" / self.dataset

    # --- step 1: split --------------------------------------------------------
    @property
    def split_csv(self) -> Path:
        """CSV ``path,label,split``; paths relative to :attr:`images_dir`."""
        return self.proc_dir / "split.csv"

    @property
    def labels_json(self) -> Path:
        """JSON list of class names; a label's index is its class id."""
        return self.proc_dir / "labels.json"

    @property
    def dedicated_test_tsv(self) -> Path:
        """Optional ``dedicatedTestImages.tsv`` inside the image folder (see splits)."""
        return self.images_dir / DEDICATED_TEST_FILE

    def dhash_cache_csv(self, hash_size: int) -> Path:
        """CSV cache of the images' dhashes (``path,bytes,mtime_ns,width,height,dhash``), per hash size."""
        return self.proc_dir / f"dhash{hash_size}.csv"

    # --- getting and curating images ------------------------------------------------
    @property
    def scrape_manifest_tsv(self) -> Path:
        """TSV ``label,query,url,file,sha256,status``: every URL the image search tried (the scraper's resume log)."""
        return self.images_dir / SCRAPE_MANIFEST_FILE

    @property
    def duplicates_dir(self) -> Path:
        """``images/<ds>_duplicates/``: near-duplicates moved out of the dataset, and the reports of those moves."""
        return self.images_dir.parent / f"{self.dataset}_duplicates"

    def duplicates_report_csv(self, stamp: str) -> Path:
        """The report of one duplicate removal (what moved where), named by its time stamp."""
        return self.duplicates_dir / f"duplicatesReport_{stamp}.csv"

    @property
    def duplicates_dry_run_csv(self) -> Path:
        """What a dry run of the duplicate removal would move (nothing under ``images/`` changes)."""
        return self.proc_dir / "duplicatesDryRun.csv"

    @property
    def excluded_dir(self) -> Path:
        """``images/<ds>_excluded/``: images taken out of the dataset by a correction (never deleted)."""
        return self.images_dir.parent / f"{self.dataset}_excluded"

    @property
    def annotations_log_csv(self) -> Path:
        """``images/<ds>_annotations.csv``: the log of every label correction, exclusion and undo."""
        return self.images_dir.parent / f"{self.dataset}_annotations.csv"

    # --- step 2: featurizer -----------------------------------------------------
    @property
    def featurizer_pth(self) -> Path:
        """Checkpoint of the network used by step 3 (torch state dict + its recipe)."""
        return self.proc_dir / "featurizer.pth"

    @property
    def refinement_checkpoint(self) -> Path:
        """Refinement state after the last finished epoch (model, optimizer, history, best weights)."""
        return self.proc_dir / "refinement_checkpoint.pth"

    @property
    def training_csv(self) -> Path:
        """Per refinement epoch: learning rate, training loss/error, validation loss/error, seconds."""
        return self.results_dir / "dnnTraining.csv"

    @property
    def training_png(self) -> Path:
        return self.results_dir / "dnnTraining.png"

    # --- step 3: features -------------------------------------------------------
    @property
    def features_npy(self) -> Path:
        """float32 array, one row per line of :attr:`features_csv`."""
        return self.proc_dir / "features.npy"

    @property
    def features_csv(self) -> Path:
        """CSV ``row,path,label,split,ok``; ``ok=0`` rows could not be read (NaN features)."""
        return self.proc_dir / "features.csv"

    @property
    def features_json(self) -> Path:
        """How the features were made (backbone, resolution, precision, ...)."""
        return self.proc_dir / "features.json"

    @property
    def features_cache_json(self) -> Path:
        """Which row of :attr:`features_npy` belongs to which image file (size, mtime), for reuse by the next run."""
        return self.proc_dir / "features_cache.json"

    @property
    def features_parquet(self) -> Path:
        """Folder of Parquet files ``path,label,split,ok,error,features``: the images the Spark engine
        featurized in its last run of step 3 (see :mod:`imgclass.spark.featurize`)."""
        return self.proc_dir / "features.parquet"

    # --- step 4: classifier -------------------------------------------------------
    @property
    def svm_joblib(self) -> Path:
        return self.proc_dir / "svm.joblib"

    @property
    def svm_json(self) -> Path:
        """Human-readable summary of the SVM: chosen C, CV table, labels, featurizer."""
        return self.proc_dir / "svm.json"

    # --- step 5: evaluation -------------------------------------------------------
    @property
    def metrics_json(self) -> Path:
        return self.results_dir / "metrics.json"

    @property
    def predictions_csv(self) -> Path:
        """One row per test image: ``path,label,predicted,correct,score,score_<class>...``."""
        return self.results_dir / "predictions.csv"

    @property
    def roc_curves_png(self) -> Path:
        return self.results_dir / "roc_curves.png"

    @property
    def confusion_matrix_png(self) -> Path:
        return self.results_dir / "confusion_matrix.png"

    @property
    def per_class_accuracy_png(self) -> Path:
        return self.results_dir / "per_class_accuracy.png"

    @property
    def examples_png(self) -> Path:
        return self.results_dir / "examples.png"

    @property
    def evaluation_plots(self) -> tuple[Path, ...]:
        """Step 5's plots, in the order a reader wants them."""
        return (self.roc_curves_png, self.confusion_matrix_png, self.per_class_accuracy_png, self.examples_png)

    # --- run tracking (MLflow) -------------------------------------------------------
    @property
    def mlflow_run_json(self) -> Path:
        """JSON ``run_id``, ``tracking_uri``, ``experiment_id``: the MLflow run step 1 started, resumed by steps 2-5."""
        return self.proc_dir / "mlflow_run.json"

    @property
    def tracking_lock(self) -> Path:
        """Lock file (``fcntl.flock``) of the dataset's tracking workers, held for moments (taking a turn,
        writing or printing :attr:`tracking_log`); its text: how much of the log was printed (bytes)."""
        return self.proc_dir / "tracking.lock"

    def tracking_turn_lock(self, ticket: int) -> Path:
        """Held (``fcntl.flock``) by tracking worker number ``ticket`` from its script's start until it is done;
        JSON ``step``, ``state`` (``queued``, ``finished``, ``timed out``). See :mod:`imgclass.tracking.pending`."""
        return self.proc_dir / f"tracking.{int(ticket)}.lock"

    @property
    def tracking_log(self) -> Path:
        """Text, one line per message (``time<TAB>step<TAB>log|warn<TAB>message``): what a tracking worker said
        after its script had ended; the next tracked step prints the lines it has not printed yet."""
        return self.proc_dir / "tracking.log"

    # --- scripts 6-7: batch scoring -------------------------------------------------
    @property
    def batch_scores_csv(self) -> Path:
        """Default output of batch scoring (``batch_outputCsv``)."""
        return self.results_dir / "batchScores.csv"

    @property
    def batch_scores_sqlite(self) -> Path:
        """Default database of batch scoring (``batch_database``)."""
        return self.results_dir / "batchScores.sqlite"

    @property
    def batch_scores_parquet(self) -> Path:
        """Default output of batch scoring on Spark (``spark_batchOutput``): a folder of Parquet files
        ``path,ok,error,label,score,scores,model_name,model_version`` (see :mod:`imgclass.spark.batch`)."""
        return self.results_dir / "batchScores.parquet"


def require(path: Path, made_by: str) -> Path:
    """Return ``path`` if it exists, else raise an error naming the step that makes it."""
    if not path.exists():
        raise MissingArtifactError(f"{path} does not exist: run {made_by} first")
    return path
