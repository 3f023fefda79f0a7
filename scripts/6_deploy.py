"""Step 6: serve the trained model of datasetName over HTTP (REST API + a web page).

Loads proc/<datasetName>/ once (whatever classifier step 4 trained) and
starts uvicorn on deploy_host:deploy_port. Endpoints: POST /score (the
original tutorial's base64 request), POST /predict (multipart or JSON
images), GET /health, GET /labels, the web page at /, the OpenAPI document at
/openapi.json (browsable at /docs). Set the environment variable
IMGCLASS_API_KEY to require 'Authorization: Bearer <key>'. Stop with Ctrl-C.
"""

import sys

import uvicorn

from imgclass.cli import run_main
from imgclass.layout import DatasetLayout
from imgclass.parameters import parse_command_line
from imgclass.predict import Predictor
from imgclass.serving import ServiceSettings, create_app, describe_settings, warm_up

USED = ["datasetName", "rootDir", "run_device", "run_precision", "deploy_host", "deploy_port",
        "deploy_maxRequestBytes", "deploy_maxImages", "deploy_topK"]


def main(argv: list[str]) -> None:
    params = parse_command_line(argv, USED, __doc__)
    predictor = Predictor.from_layout(DatasetLayout.from_parameters(params), params.run_device, params.run_precision)
    settings = ServiceSettings.from_parameters(params)
    print(f"Model {predictor.model_name} (version {predictor.model_version}), {len(predictor.labels)} labels, "
          f"on {predictor.device}")
    print(f"Limits: {describe_settings(settings)}")
    print(f"Warmed up the model in {warm_up(predictor):.1f} s", flush=True)
    print(f"Serving on http://{params.deploy_host}:{params.deploy_port}/ (web page), "
          f"API docs at /docs; Ctrl-C stops", flush=True)
    uvicorn.run(create_app(predictor, settings), host=params.deploy_host, port=params.deploy_port,
                log_level="info", server_header=False)


if __name__ == "__main__":
    sys.exit(run_main(main))
