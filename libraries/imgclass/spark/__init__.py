"""Steps 3 and 7 on Apache Spark: the toolkit's own featurizer and classifier, run by Spark's executors.

With ``run_engine = 'spark'`` the image list becomes a Spark DataFrame and
each partition goes through the same code as the local engine (decoding by
:mod:`imgclass.io.images`, the backbone's transform, the forward pass of
:mod:`imgclass.model.inference`, the :class:`~imgclass.model.predictor.Predictor`),
in Arrow batches (``mapInArrow``); the model files travel with the job
(``SparkContext.addFile`` / Spark Connect artifacts) and are loaded once per
Python worker. Spark distributes; nothing here re-implements a model.

- :mod:`imgclass.spark.session`: the session (master, settings, the one-line
  error when PySpark or Java is missing) and shipping files to executors;
- :mod:`imgclass.spark.executor`: what runs inside the Python workers;
- :mod:`imgclass.spark.featurize`: step 3's Parquet table and the batches the
  step writes into ``features.npy``;
- :mod:`imgclass.spark.batch`: batch scoring into a Parquet table.

PySpark is an optional dependency (``pip install 'imgclass[spark]'``): it is
imported inside functions only, so nothing else pays for it.
"""
