"""Step 6: serve a trained model over HTTP (REST API + web page): what ``scripts/6_deploy.py`` and
``python -m imgclass serve`` run.

Importing this module is cheap; the model, FastAPI and uvicorn are loaded by :func:`serve`.
"""

from __future__ import annotations

from imgclass.parameters import Parameters, StepSpec

STEP = StepSpec("serve", "scripts/6_deploy.py", "serve the trained model over HTTP (REST API + web page)",
                ("datasetName", "rootDir", "run_device", "run_precision", "deploy_host", "deploy_port",
                 "deploy_maxRequestBytes", "deploy_maxImages", "deploy_topK", "deploy_modelUri", "mlflow_trackingUri",
                 "images_maxPixels", "deploy_maxConcurrentDecodes", "deploy_maxConnections", "deploy_keepAliveSeconds",
                 "deploy_headerTimeoutSeconds", "deploy_bodyTimeoutSeconds", "batch_database",
                 "label_unlabeledFolder", "label_reviewLabeled", "label_uncertainty", "label_queueSize",
                 "label_retrainArgs"))


def serve(params: Parameters) -> None:
    """Load ``proc/<ds>/`` once, warm the model up, and serve it with uvicorn until Ctrl-C / SIGTERM.

    Also serves the labeling and results pages (``/label``, ``/results``: :mod:`imgclass.serve.labeling_api`).

    uvicorn runs with the service's connection limits and a redacted access
    log (:mod:`imgclass.serve.server`).
    """
    import uvicorn

    from imgclass.serve.app import ServiceSettings, create_app, describe_settings, warm_up
    from imgclass.serve.labeling_api import LabelingService
    from imgclass.serve.pyfunc import load_deployed_predictor

    predictor = load_deployed_predictor(params)  # deploy_modelUri: a registered MLflow model, or proc/<ds>/
    settings = ServiceSettings.from_parameters(params)
    labeling = LabelingService.from_parameters(params, predictor)
    print(f"Model {predictor.model_name} (version {predictor.model_version}), {len(predictor.labels)} labels, "
          f"on {predictor.device}")
    print(f"Limits: {describe_settings(settings)}")
    print(f"Warmed up the model in {warm_up(predictor):.1f} s", flush=True)
    print(f"Serving on http://{params.deploy_host}:{params.deploy_port}/ (web page), labeling at /label, results "
          f"at /results (database {labeling.session.database.display_url}), API docs at /docs; Ctrl-C stops",
          flush=True)
    uvicorn.run(create_app(predictor, settings, labeling=labeling),
                **settings.uvicorn_options(params.deploy_host, params.deploy_port))
