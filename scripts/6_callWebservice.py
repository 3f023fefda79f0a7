"""Step 6 (client): send an image to the running service's /score, print the label and scores.

Like the original tutorial's client: the image is sent base64-encoded in
{"input_df": [{"image base64 string": ...}]}; the request is repeated
deploy_clientRepeats times and the total round-trip time is printed next to
the server's own compute time (executionTimeMs), so the HTTP and encoding
overhead is visible. Start the service first (scripts/6_deploy.py). If the
environment variable IMGCLASS_API_KEY is set, it is sent as a Bearer token.
"""

import sys
from pathlib import Path

from imgclass.cli import parse_step, run_main
from imgclass.serve.client import STEP, call_service, client_image, service_url

#: This checkout: its PARAMETERS.py is the default, its resources/ hold the demo images and weight files.
PROJECT_DIR = Path(__file__).resolve().parents[1]


def main(argv: list[str]) -> None:
    params = parse_step(argv, STEP, __doc__, PROJECT_DIR)
    image = client_image(params)
    print(f"Sending {image} ({image.stat().st_size} bytes) to {service_url(params)}/score "
          f"{params.deploy_clientRepeats} time(s)")
    print(call_service(params, image).summary())


if __name__ == "__main__":
    sys.exit(run_main(main))
