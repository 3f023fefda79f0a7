"""Property-based fuzzing of the service's API from its own OpenAPI document (schemathesis, issue 12).

schemathesis generates requests for every operation of ``/openapi.json`` (valid ones and ones that break
the schema: wrong types, missing fields, odd content types, random bytes as images) and sends them to the
app in process (ASGI, no socket). Every response must be a non-5xx that the document describes: a
documented status code, content type, headers and body schema. The model is the tiny one of
tests/test_hostile.py. The number of examples is bounded and the generation derandomized, so the run is
short and the same every time.
"""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (content_type_conformance, response_headers_conformance,
                                               response_schema_conformance, status_code_conformance)

from imgclass.layout import DatasetLayout
from imgclass.serve.app import ServiceSettings, create_app
from imgclass.serve.predictor import load_predictor

from test_hostile import tiny_model
from test_images import jpeg_bytes

#: examples per operation, content type and mode (schema-conforming or not)
EXAMPLES = 25
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance]
#: every operation of the document (/predict's cases come as JSON and as multipart)
OPERATIONS = [("GET", "/health"), ("GET", "/labels"), ("POST", "/score"), ("POST", "/predict")]


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory: pytest.TempPathFactory) -> schemathesis.BaseSchema:
    root, _ = tiny_model(tmp_path_factory)
    predictor = load_predictor(DatasetLayout(Path(root), "tiny"), "cpu")
    app = create_app(predictor, ServiceSettings(max_request_bytes=2_000_000, max_images=4, top_k=2))
    return schemathesis.openapi.from_asgi("/openapi.json", app)


def test_the_fuzzed_operations_are_all_there_are(api_schema: schemathesis.BaseSchema) -> None:
    operations = {(result.ok().method.upper(), result.ok().path) for result in api_schema.get_all_operations()}
    assert operations == set(OPERATIONS)


# schemathesis's own pytest integration (schema.parametrize with a lazily loaded schema) does not run under
# pytest 9, so each operation's strategy is driven by Hypothesis directly.
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
@pytest.mark.parametrize("method, path", OPERATIONS)
def test_every_response_is_documented_and_none_is_a_server_error(
        api_schema: schemathesis.BaseSchema, method: str, path: str, mode: GenerationMode) -> None:
    if mode is GenerationMode.NEGATIVE and method == "GET":
        pytest.skip("a GET here takes nothing that could break its schema")
    operation = api_schema[path][method]
    strategy = operation.as_strategy(mode)

    @given(case=strategy)
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def fuzz(case: schemathesis.Case) -> None:
        case.call_and_validate(checks=CHECKS)

    fuzz()


def test_a_real_image_gets_a_200_that_matches_the_document(api_schema: schemathesis.BaseSchema) -> None:
    """Generated base64 is never a decodable image: the success responses are checked with a real one."""
    image = base64.b64encode(jpeg_bytes((40, 30))).decode("ascii")
    cases = [api_schema["/score"]["POST"].Case(body={"input_df": [{"image base64 string": image}]},
                                                media_type="application/json"),
             api_schema["/predict"]["POST"].Case(body={"images": [image, image]}, media_type="application/json",
                                                  query={"top_k": 2})]
    for case in cases:
        response = case.call_and_validate(checks=CHECKS)
        assert response.status_code == 200, response.text
