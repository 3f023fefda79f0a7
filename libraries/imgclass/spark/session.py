"""The Spark session a run uses, and the files its executors need.

:func:`spark_session` joins the session that is already running (a
Databricks notebook, ``spark-submit``, a test's fixture) and otherwise starts
one at ``spark_master`` with the ``spark_conf`` settings, stopping it when the
run ends. A missing PySpark or Java is a one-line error saying what to
install, not a traceback from deep inside Py4J.

:func:`ship_file` hands a model file to every executor (``SparkContext.addFile``,
or a Spark Connect artifact), under a name made from its content, so two
models never collide and the same model is shipped once per session.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from imgclass.errors import ImgClassError

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

INSTALL_HINT = ("run_engine='spark' needs PySpark and PyArrow: pip install -e '.[spark]' in the project folder "
                "(or pip install 'pyspark>=3.5' pyarrow)")
JAVA_HINT = ("Spark needs a Java runtime (17 or newer): install one (Debian/Ubuntu: apt-get install "
             "default-jre-headless) or set JAVA_HOME")
#: settings of a session started here, unless spark_conf says otherwise
DEFAULT_CONF = {"spark.sql.session.timeZone": "UTC"}


class SparkUnavailableError(ImgClassError):
    """PySpark, PyArrow or Java is missing, or the session cannot start."""


def import_pyspark() -> Any:
    """The ``pyspark.sql`` module, or a one-line error saying what to install.

    PySpark warns at import that it does not yet fully support pandas 3; the
    toolkit exchanges Arrow batches with it, not pandas frames, so that
    warning is not the user's concern.
    """
    # it says so again whenever a session starts or a job is planned, so the filter stays
    warnings.filterwarnings("ignore", message=".*PySpark does not yet fully support pandas", category=FutureWarning)
    try:
        import pyarrow  # noqa: F401  (Arrow batches: mapInArrow and the Parquet files)
        import pyspark.sql
    except ImportError as exc:
        raise SparkUnavailableError(f"{INSTALL_HINT}; {exc.name or exc} is missing") from None
    return pyspark.sql


def parse_conf(entries: Sequence[str]) -> dict[str, str]:
    """``spark_conf`` (``'key=value'`` strings, as spark-submit's ``--conf``) as a dict."""
    conf = {}
    for entry in entries:
        key, _, value = entry.partition("=")
        conf[key.strip()] = value.strip()
    return conf


def is_local_master(master: str) -> bool:
    """True for ``local``, ``local[N]``, ``local[*]``, ``local[N,F]``: executors in this machine's JVM."""
    return master == "local" or master.startswith("local[")


def java_available() -> bool:
    """A ``java`` executable under ``$JAVA_HOME`` or on the PATH."""
    home = os.environ.get("JAVA_HOME")
    return bool(home and Path(home, "bin", "java").exists()) or shutil.which("java") is not None


@contextlib.contextmanager
def _local_workers_use_this_python(master: str) -> Iterator[None]:
    """Python workers of a local master run this interpreter (its packages), not whatever 'python3' is on PATH.

    PySpark reads ``PYSPARK_PYTHON`` once, when the SparkContext starts; a
    value the user set is kept. Cluster executors have their own Python
    (``spark.pyspark.python`` or the image's), so nothing is changed there.
    """
    if not is_local_master(master) or "PYSPARK_PYTHON" in os.environ:
        yield
        return
    os.environ["PYSPARK_PYTHON"] = sys.executable
    try:
        yield
    finally:
        os.environ.pop("PYSPARK_PYTHON", None)


def active_session() -> "SparkSession | None":
    """The session this process already runs (classic or Spark Connect), if any.

    Spark's "active" session is per thread: one started in another thread
    of this process (a notebook's background job, a test's fixture) is not
    active in this one, yet it is running, and it is not ours to stop; so a
    running SparkContext counts too (its session is the builder's default).
    """
    sql = import_pyspark()
    session = sql.SparkSession.getActiveSession()
    if session is None:
        with contextlib.suppress(ImportError):  # a Spark Connect-only install has no classic SparkContext
            from pyspark import SparkContext

            if SparkContext._active_spark_context is not None:
                session = sql.SparkSession.builder.getOrCreate()
    if session is None:
        with contextlib.suppress(Exception):  # Spark Connect not installed, or no session
            from pyspark.sql.connect.session import SparkSession as ConnectSession
            session = ConnectSession.getActiveSession()
    return session


@contextlib.contextmanager
def spark_session(master: str, conf: Sequence[str] = (), app_name: str = "imgclass") -> Iterator["SparkSession"]:
    """The running session, or a new one at ``master`` with ``conf`` (stopped again on leaving).

    ``master`` is any Spark master URL (``local[*]``, ``spark://``, ``yarn``,
    ``k8s://``); ``sc://`` connects to a Spark Connect server; ``''`` leaves
    the master to ``spark-submit`` or ``spark-defaults.conf``. A session that
    was running before is used as it is: its master and settings are its
    owner's.
    """
    sql = import_pyspark()
    running = active_session()
    if running is not None:
        yield running
        return
    if not master.startswith("sc://") and not java_available():  # a classic driver runs in a local JVM
        raise SparkUnavailableError(JAVA_HINT)
    builder = sql.SparkSession.builder.appName(app_name)
    if master.startswith("sc://"):
        builder = builder.remote(master)
    elif master:
        builder = builder.master(master)
    for key, value in {**DEFAULT_CONF, **parse_conf(conf)}.items():
        builder = builder.config(key, value)
    try:
        with _local_workers_use_this_python(master):
            session = builder.getOrCreate()
    except Exception as exc:  # Py4J/Spark errors: no JVM, a bad master URL, an unreachable cluster
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise SparkUnavailableError(f"cannot start Spark at spark_master={master!r}: {first}") from exc
    try:
        yield session
    finally:
        session.stop()


def spark_location(location: str) -> tuple[str, bool]:
    """A path or URL as Spark reads and writes it, and whether it is on this machine's file system.

    A URL (``s3a://``, ``abfss://``, ``hdfs://``, ``dbfs:/``...) is kept as it
    is; a path becomes ``file://`` + the absolute path, so a cluster whose
    default file system is HDFS still uses the local (or mounted) one, and a
    space stays a space (``Path.as_uri()`` would write ``%20``, which Hadoop
    takes literally).
    """
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:/", location):
        return location, False
    return "file://" + Path(location).expanduser().resolve().as_posix(), True


def is_spark_connect(session: Any) -> bool:
    """True for a Spark Connect session (no SparkContext here; files travel as artifacts)."""
    return type(session).__module__.startswith("pyspark.sql.connect")


def default_parallelism(session: Any) -> int:
    """Cores the session offers (Spark's default parallelism); Spark Connect: its shuffle partitions."""
    if is_spark_connect(session):
        return max(1, int(session.conf.get("spark.sql.shuffle.partitions", "200")))
    return max(1, session.sparkContext.defaultParallelism)


def master_url(session: Any, requested: str) -> str:
    """The master ``session`` runs at (a running session's may differ from ``requested``, the ``spark_master`` asked for)."""
    with contextlib.suppress(Exception):
        if is_spark_connect(session):
            return str(session.conf.get("spark.master", None) or requested)
        return str(session.sparkContext.master)
    return requested


def warm_up(session: Any) -> None:
    """Start a Python worker on every core the session offers and import torch and the model code there.

    What the first job of a session otherwise pays before its first image
    (workers are reused by later jobs, Spark's default): the benchmark calls
    it to report start-up apart from throughput, and the tests to pay it once.
    """
    from imgclass.spark.executor import import_model_code

    cores = default_parallelism(session)
    session.range(cores, numPartitions=cores).mapInArrow(import_model_code, "id long").collect()


def _content_name(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return f"{path.stem}-{digest.hexdigest()[:16]}{path.suffix}"


def ship_file(session: Any, path: Path) -> str:
    """Make ``path`` readable by every executor; return the name ``pyspark.SparkFiles.get`` finds it under.

    The name carries a hash of the content: a re-trained model is a new
    file for Spark (which refuses to replace a shipped file of the same
    name), and the same model shipped twice is the same file.
    """
    path = Path(path)
    name = _content_name(path)
    staged = Path(tempfile.gettempdir()) / "imgclass-spark-files" / name
    if not staged.exists():
        from imgclass.io.atomic import atomic_path

        staged.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(staged) as tmp:
            shutil.copyfile(path, tmp)
    if is_spark_connect(session):
        session.addArtifacts(str(staged), file=True)
    else:
        session.sparkContext.addFile(str(staged))
    return name


@contextlib.contextmanager
def sql_conf(session: Any, settings: dict[str, str]) -> Iterator[None]:
    """Runtime SQL settings for one job, the session's own values restored afterwards."""
    previous = {key: session.conf.get(key, None) for key in settings}
    for key, value in settings.items():
        session.conf.set(key, value)
    try:
        yield
    finally:
        for key, value in previous.items():
            if value is None:
                session.conf.unset(key)
            else:
                session.conf.set(key, value)
