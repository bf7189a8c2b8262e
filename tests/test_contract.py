"""serving.contract on its own: which error bodies are rewritten and into what, and what the OpenAPI
patch adds to a document shaped like BentoML's."""
from __future__ import annotations

import json

from serving.contract import patch_openapi, reshaped
from serving.tasks import STATUSES


def _body(raw: bytes | None) -> dict | None:
    return None if raw is None else json.loads(raw)


def test_bodies_already_in_shape_pass_untouched():
    assert reshaped(413, b'{"error": "too big", "status": 413}', b"application/json") is None


def test_validation_errors_name_the_field_and_keep_their_detail():
    detail = [{"type": "missing", "loc": ["images"], "msg": "Field required"}]
    body = _body(reshaped(400, json.dumps({"error": "1 validation error for Input", "detail": detail}).encode(),
                          b"application/json"))
    assert body == {"error": "invalid request: images: Field required", "status": 400, "detail": detail}, body


def test_lists_text_and_empty_bodies_become_the_shape():
    assert _body(reshaped(404, b'[{"error": "task_id not found"}]', b"application/json")) == \
        {"error": "task_id not found", "status": 404}
    assert _body(reshaped(405, b"Method Not Allowed", b"text/plain; charset=utf-8")) == \
        {"error": "Method Not Allowed", "status": 405}
    assert _body(reshaped(500, b"", b"")) == {"error": "Internal Server Error", "status": 500}
    assert _body(reshaped(404, b'{"error": "task_id not found"}', b"application/json")) == \
        {"error": "task_id not found", "status": 404}


def test_openapi_patch_declares_errors_get_model_and_the_task_routes():
    ref = {"$ref": "#/components/schemas/InvalidArgument"}
    answers = {"200": {"content": {"application/json": {"schema": {"type": "array", "items": {"type": "array"}}}}},
               "400": {"content": {"application/json": {"schema": ref}}}}
    doc = {"paths": {"/infer": {"post": {"responses": json.loads(json.dumps(answers)), "requestBody": {}}},
                     "/model": {"post": {"responses": {"200": {}}, "requestBody": {}, "operationId": "model"}},
                     "/readyz": {"get": {"responses": {"200": {}}}}},
           "components": {"schemas": {}}}
    patched = patch_openapi(doc)
    infer = patched["paths"]["/infer"]["post"]["responses"]
    assert {"400", "401", "404", "411", "413", "415", "500", "503"} <= set(infer), sorted(infer)
    assert infer["415"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
    assert infer["200"]["content"]["application/json"]["schema"]["items"]["nullable"] is True
    assert "get" in patched["paths"]["/model"] and "requestBody" not in patched["paths"]["/model"]["get"]
    assert patched["paths"]["/readyz"]["get"]["responses"] == {"200": {}}, "probes are left alone"
    task = patched["components"]["schemas"]["TaskStatusResponse"]
    assert task["properties"]["status"]["enum"] == list(STATUSES) and task["required"] == ["task_id", "status"]
    routes = {(m, p) for p, ops in patched["paths"].items() if p.startswith("/submission/") for m in ops}
    assert routes == {("post", "/submission/submit"), ("get", "/submission/status"), ("get", "/submission/get"),
                      ("put", "/submission/cancel"), ("post", "/submission/retry")}, sorted(routes)
    get = patched["paths"]["/submission/get"]["get"]["responses"]
    assert {"200", "400", "404", "409", "413", "500", "503"} <= set(get), sorted(get)
    assert patched["components"]["schemas"]["Error"]["required"] == ["error", "status"]
    assert doc["paths"]["/infer"]["post"]["responses"] == answers, "the input document is not modified"




def test_openapi_patch_says_what_the_routes_take_as_a_body():
    """Required bodies, exact multipart fields, each file part's media type and filename, the photo
    count between 1 and max_files, and the task id's form: what the routes refuse, the schema forbids."""
    files = {"type": "object", "required": ["images"],
             "properties": {"images": {"type": "array", "items": {"type": "string", "format": "binary"}}}}
    one = {"type": "object", "required": ["image"], "properties": {"image": {"type": "string", "format": "binary"}}}
    doc = {"paths": {
        "/predict_batch": {"post": {"responses": {}, "requestBody": {"content": {"multipart/form-data": {"schema": files}}}}},
        "/predict": {"post": {"responses": {}, "requestBody": {"content": {"multipart/form-data": {"schema": one}}}}},
        "/model": {"post": {"responses": {}, "requestBody": {"content": {"application/json": {"schema": {
            "type": "object", "properties": {}}}}}}}}}
    patched = patch_openapi(doc, max_files=7)["paths"]
    batch = patched["/predict_batch"]["post"]["requestBody"]
    schema = batch["content"]["multipart/form-data"]["schema"]
    assert batch["required"] is True and schema["additionalProperties"] is False, batch
    assert (schema["properties"]["images"]["minItems"], schema["properties"]["images"]["maxItems"]) == (1, 7), schema
    single = patched["/predict"]["post"]["requestBody"]["content"]["multipart/form-data"]["encoding"]["image"]
    assert single["contentType"] == "image/*", single
    assert 'filename="' in single["headers"]["Content-Disposition"]["schema"]["example"], single
    submit = patched["/submission/submit"]["post"]["requestBody"]["content"]["multipart/form-data"]["encoding"]
    assert submit["info"]["contentType"] == "text/csv" and "application/zip" in submit["archive"]["contentType"]
    assert "required" not in patched["/model"]["post"]["requestBody"], "POST /model needs no body"
    task_id = patched["/submission/status"]["get"]["parameters"][0]["schema"]
    assert task_id["pattern"] == "^[0-9a-f]{32}$", task_id


def test_the_client_schema_marks_the_task_apis():
    from serving.contract import patch_client_schema

    schema = {"name": "mask-classifier", "routes": [{"name": "predict", "route": "/predict"},
                                                    {"name": "submission", "route": "/submission"}]}
    patched = patch_client_schema(schema)
    assert [r.get("is_task", False) for r in patched["routes"]] == [False, True], patched
    assert "is_task" not in schema["routes"][1], "the original document is left as it was"
