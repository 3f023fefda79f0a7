"""Step 6: serve the trained model of datasetName over HTTP (REST API + a web page).

Loads proc/<datasetName>/ once (whatever classifier step 4 trained) and
starts uvicorn on deploy_host:deploy_port. Endpoints: POST /score (the
original tutorial's base64 request), POST /predict (multipart or JSON
images), GET /health, GET /labels, the web page at /, the labeling page at
/label and the results page at /results (docs/labeling.md), the OpenAPI
document at /openapi.json (browsable at /docs). Set the environment variable
IMGCLASS_API_KEY to require 'Authorization: Bearer <key>'. Stop with Ctrl-C.
"""

import sys
from pathlib import Path

from imgclass.cli import parse_step, run_main
from imgclass.serve.service import STEP, serve

#: This checkout: its PARAMETERS.py is the default, its resources/ hold the demo images and weight files.
PROJECT_DIR = Path(__file__).resolve().parents[1]


def main(argv: list[str]) -> None:
    serve(parse_step(argv, STEP, __doc__, PROJECT_DIR))


if __name__ == "__main__":
    sys.exit(run_main(main))
