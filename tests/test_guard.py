"""serving/guard.py: the API key (MASK_API_KEY), body limits and typed errors, on a stub ASGI app
behind the real RequestGuard (every branch, fast)."""
from __future__ import annotations

import pytest
from starlette.responses import PlainTextResponse
from starlette.testclient import TestClient

import tiny_service
from serving.errors import status_of
from serving.guard import RequestGuard

KEY = "s3cret-key"


async def echo(scope, receive, send):
    await PlainTextResponse(f"{scope['method']} {scope['path']}")(scope, receive, send)


def guarded(api_key=KEY, default_limit=100) -> TestClient:
    return TestClient(RequestGuard(echo, limits={"/big": 1000}, fields={}, default_limit=default_limit,
                                   api_key=api_key))


@pytest.mark.parametrize("path", ["/predict", "/", "/docs.json", "/submission/status", "/new_route"])
def test_api_key_is_needed_everywhere_but_the_probes(path):
    c = guarded()
    missing = c.get(path)
    assert missing.status_code == 401 and "Authorization: Bearer" in missing.json()["error"], missing.text
    assert missing.headers["www-authenticate"].startswith("Bearer"), missing.headers
    wrong = c.get(path, headers={"Authorization": f"Bearer {KEY}x"})
    assert wrong.status_code == 401 and wrong.json() == {"error": "wrong API key in the Authorization header",
                                                         "status": 401}, wrong.text
    assert c.get(path, headers={"Authorization": KEY}).status_code == 401, "the Bearer scheme is required"
    ok = c.get(path, headers={"Authorization": f"Bearer {KEY}"})
    assert ok.status_code == 200 and ok.text == f"GET {path}", ok.text


@pytest.mark.parametrize("path", ["/readyz", "/livez", "/metrics"])
def test_probes_stay_open_with_a_key(path):
    assert guarded().get(path).status_code == 200


def test_no_key_configured_means_open():
    assert guarded(api_key="").get("/predict").status_code == 200


@pytest.mark.parametrize("given", [f"Bearer {KEY[:-1]}", f"Bearer {KEY}x", f"Bearer {KEY[:-1]}X", "Bearer ",
                                   f"bearer {KEY}", f"Bearer {KEY} ", "Bearer " + "\u00e9" * len(KEY)])
def test_only_the_exact_key_opens(given):
    """A prefix, an extension, one changed character, a different case of the scheme, trailing space or
    non-ASCII bytes are all refused: the whole header is compared (in constant time: hmac.compare_digest)."""
    r = guarded().get("/x", headers={"Authorization": given.encode("utf-8")})
    assert r.status_code == 401 and r.json()["error"] == "wrong API key in the Authorization header", (given, r.text)


def test_get_model_is_answered_from_the_callable_it_is_given():
    """GET /model comes from a plain callable (the service hands one over); None means still loading."""
    state = {"body": None}
    c = TestClient(RequestGuard(echo, limits={}, fields={}, default_limit=100, model_info=lambda: state["body"]))
    loading = c.get("/model")
    assert loading.status_code == 503 and loading.json()["error"] == "model is still loading", loading.text
    assert loading.headers["retry-after"] == "1", loading.headers
    state["body"] = {"arch": "tiny"}
    assert c.get("/model").json() == {"arch": "tiny"}
    assert c.post("/model").text == "POST /model", "POST /model goes on to the app"
    assert guarded(api_key="").get("/model").text == "GET /model", "without a callable the app answers"
    for method in ("OPTIONS", "PUT", "DELETE", "PATCH", "HEAD"):
        other = c.request(method, "/model")
        assert other.status_code == 405 and other.headers["allow"] == "GET, POST", (method, other.headers)


def test_default_body_limit_covers_unlisted_routes_and_methods():
    c = guarded(api_key="")
    for method in ("POST", "PUT", "PATCH"):
        r = c.request(method, "/never_listed", content=b"x" * 101)
        assert r.status_code == 413 and "limit of 100 bytes" in r.json()["error"], (method, r.text)
        assert c.request(method, "/never_listed", content=b"x" * 100).status_code == 200, method
    assert c.post("/big", content=b"x" * 1000).status_code == 200, "a listed route has its own limit"
    assert c.post("/big", content=b"x" * 1001).status_code == 413
    assert c.post("/never_listed").status_code == 200, "no body at all is fine"


def test_status_of_follows_the_type():
    from maskdata.preprocess import ImageError, ImageTooLarge
    from serving.archive import ArchiveError, ArchiveTooLarge
    from serving.errors import ServiceBusy

    assert [status_of(e) for e in (ImageTooLarge("a"), ImageError("over the limit"), ArchiveTooLarge("b"),
                                   ArchiveError("too large"), ValueError("x"), ServiceBusy("y"), KeyError())] \
        == [413, 400, 413, 400, 400, 503, 500]

# The real service with a key is tested through `bentoml serve` (test_serve_subprocess.py::
# test_api_key_on_a_real_server): a second in-process ASGI app would register BentoML's request
# metrics twice in this process's Prometheus registry.


def test_bentoml_routes_every_api_as_post_only():
    """Why the guard answers ``GET /model`` (serving/guard.py): when this fails, BentoML routes GET
    itself and the guard's answer can go."""
    get = tiny_service.facts()["get_of_an_api"]
    assert get["status"] == 405 and get["headers"].get("allow") == "POST", get
