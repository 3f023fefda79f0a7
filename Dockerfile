# The REST service of step 6 (scripts/6_deploy.py) with one trained model, on the CPU.
#
# Train first (e.g. `make demo`), then, from the repository root:
#   docker build -t imgclass --build-arg DATASET=tuxpaintStamps .
#   docker run --rm -p 8000:8000 -e IMGCLASS_API_KEY=... imgclass
# The image holds proc/<DATASET>/ (the featurizer and classifier) and serves it on port 8000.
# Optional: --build-arg TORCH_INDEX_URL=<PyTorch's CPU-only wheel index> installs the
# CPU build of torch/torchvision (far smaller than the default CUDA build), at
# TORCH_VERSION/TORCHVISION_VERSION (a matching pair).
FROM python:3.11-slim

ARG DATASET=tuxpaintStamps
ARG TORCH_INDEX_URL=""
ARG TORCH_VERSION=2.9.1
ARG TORCHVISION_VERSION=0.24.1

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    IMGCLASS_PARAMETERS=/app/PARAMETERS.py

WORKDIR /app

# Dependencies first, so that code changes do not reinstall them. The test-only
# packages (pytest, playwright, notebook tools) are left out of the image.
COPY requirements.txt ./
RUN if [ -n "$TORCH_INDEX_URL" ]; then \
        pip install --index-url "$TORCH_INDEX_URL" "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION"; \
    fi \
 && grep -vE '^(pytest|playwright|jupyterlab|ipykernel|ipywidgets|nbclient|nbformat)([<>=!~ ]|$)' requirements.txt \
        > /tmp/requirements-service.txt \
 && pip install -r /tmp/requirements-service.txt

# The package (editable, so that PARAMETERS.py and resources/ are found beside it) and the scripts.
COPY pyproject.toml PARAMETERS.py ./
COPY libraries/ libraries/
COPY scripts/ scripts/
COPY resources/demoImages/mammals/bovines_cow.jpg resources/demoImages/mammals/
RUN pip install --no-deps -e .

# The trained model: featurizer.pth, svm.joblib (when the classifier has one) and labels.
COPY data/proc/${DATASET}/ data/proc/${DATASET}/

RUN useradd --create-home --uid 10001 imgclass
USER 10001

ENV DATASET=${DATASET}
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]

# Shell form so that ${DATASET} is expanded; exec keeps uvicorn as PID 1 (clean SIGTERM).
# hadolint ignore=DL3025
CMD exec python scripts/6_deploy.py --datasetName="${DATASET}" --deploy_host=0.0.0.0 --deploy_port=8000 --run_device=cpu
