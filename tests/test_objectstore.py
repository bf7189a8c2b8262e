"""Object-store images and outputs (``serving/objectstore.py``): URI parsing and the AWS environment
without a server; listing, reading, all-or-nothing uploads and ``mask-submit --images s3://…`` (both
engines) against moto's S3 server on loopback (the ``s3_server`` fixture: a real HTTP server)."""
from __future__ import annotations

import pytest

from serving import objectstore
from serving.objectstore import Store, check_key, s3_options_from_env

BUCKET = "mask-eval"


@pytest.mark.parametrize("text, scheme, remote", [
    ("images", "", False), ("/data/images", "", False), ("file:///data/images", "file", False),
    ("s3://bucket/images", "s3", True), ("S3://bucket/x", "s3", True), ("gs://b/p", "gs", True)])
def test_scheme_and_remote(text, scheme, remote):
    assert objectstore.scheme_of(text) == scheme, f"scheme of {text!r}"
    assert objectstore.is_remote(text) is remote, f"is_remote({text!r})"


def test_store_open_parses_bucket_and_prefix():
    assert Store.open("s3://bucket/a/b/").root == "bucket/a/b", "trailing slash not dropped"
    assert Store.open("s3://bucket").root == "bucket", "a bare bucket is the root"
    assert Store.open("s3://bucket/a").path("x/y.jpg") == "bucket/a/x/y.jpg"


@pytest.mark.parametrize("uri, expected", [("s3:///images", "no bucket"), ("nosuchfs://b/p", "unknown scheme")])
def test_store_open_refuses_bad_uris(uri, expected):
    with pytest.raises(ValueError, match=expected):
        Store.open(uri)


@pytest.mark.parametrize("image_id", ["../x.jpg", "a/../../x.jpg", "a//b.jpg", "./a.jpg", "a/"])
def test_keys_that_leave_or_blur_the_prefix_are_refused(image_id):
    with pytest.raises(ValueError, match="path segment"):
        check_key(image_id)


def test_keys_under_the_prefix_pass():
    assert check_key("person_1/mask1.jpg") == "person_1/mask1.jpg"


def test_endpoint_and_region_from_the_aws_variables(monkeypatch):
    for k in objectstore.ENDPOINT_ENV + objectstore.REGION_ENV:
        monkeypatch.delenv(k, raising=False)
    assert s3_options_from_env() == {}, "no variables should mean pyarrow's defaults"
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    assert s3_options_from_env() == {"endpoint_override": "127.0.0.1:9000", "scheme": "http",
                                     "region": "eu-west-1"}
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "https://s3.example.com")   # the S3-specific one wins, as in boto3
    monkeypatch.setenv("AWS_REGION", "us-west-2")
    assert s3_options_from_env() == {"endpoint_override": "s3.example.com", "scheme": "https",
                                     "region": "us-west-2"}


def test_store_pickles_without_its_filesystem():
    import pickle

    store = Store.open("s3://bucket/prefix")
    clone = pickle.loads(pickle.dumps(store))
    assert clone == store and "_fs" not in clone.__dict__, "a Store must travel as its URI only"


# ---------------------------------------------------------------- against the loopback S3 server

@pytest.mark.slow
def test_list_read_and_locate_on_the_server(s3_server, synth_root):
    uri = s3_server.upload_dir(synth_root / "eval" / "images", BUCKET, "locate/images")
    store = Store.open(uri)
    listed = store.list_files()
    local = sorted(p.relative_to(synth_root / "eval" / "images").as_posix()
                   for p in (synth_root / "eval" / "images").rglob("*") if p.is_file())
    assert sorted(k for k, is_file in listed.items() if is_file) == local, "listing differs from the uploaded files"
    assert store.read_bytes(local[0]) == (synth_root / "eval" / "images" / local[0]).read_bytes()
    paths, missing = objectstore.locate_objects([local[0], "absent/x.jpg"], store)
    assert paths[0] == store.path(local[0]) and missing == {"absent/x.jpg": "missing image file"}, missing
    folder = local[0].rsplit("/", 1)[0]
    if "/" in local[0]:
        assert objectstore.locate_objects([folder], store)[1] == {folder: "not a regular file"}
    with pytest.raises(ValueError, match="do not name a key"):
        objectstore.locate_objects(["../escape.jpg"], store)


@pytest.mark.slow
def test_upload_is_complete_or_absent(s3_server):
    s3_server.client.create_bucket(Bucket="mask-upload")
    store = Store.open("s3://mask-upload/out")
    data = b"ImageID,ans\n" + b"x.jpg,1\n" * 50_000
    store.upload_bytes("sub.csv", data)
    assert store.read_bytes("sub.csv") == data, "the uploaded object is not the bytes given"
    assert list(store.list_files()) == ["sub.csv"], f"temporary key left behind: {store.list_files()}"
    with pytest.raises(ValueError, match="cannot upload"):
        Store.open("s3://mask-no-such-bucket/out").upload_bytes("sub.csv", data)
    assert not Store.open("s3://mask-upload/out").exists("missing.csv")


# ---------------------------------------------------------------- mask-submit --images s3://… (local engine)

def _submit(info, images, out, model, *extra):
    from serving.submit_cli import main

    return main(["--info", str(info), "--images", str(images), "--out", str(out), "--model", str(model),
                 "--batch-size", "8", "--no-progress", *map(str, extra)])


@pytest.mark.slow
def test_local_engine_reads_s3_same_bytes_as_disk(s3_server, synth_root, onnx_model, tmp_path):
    eval_dir = synth_root / "eval"
    uri = s3_server.upload_dir(eval_dir / "images", BUCKET, "local/images")
    assert _submit(eval_dir / "info.csv", eval_dir / "images", tmp_path / "disk.csv", onnx_model,
                   "--probs", tmp_path / "disk.probs.csv") == 0
    before = s3_server.gets(f"/{BUCKET}/local/images/")
    assert _submit(eval_dir / "info.csv", uri, tmp_path / "s3.csv", onnx_model, "--probs", tmp_path / "s3.probs.csv",
                   "--worker-kind", "process", "--workers", "2") == 0
    n = len((eval_dir / "info.csv").read_text().splitlines()) - 1
    assert s3_server.gets(f"/{BUCKET}/local/images/") - before == n, "each image should be read exactly once"
    assert (tmp_path / "s3.csv").read_bytes() == (tmp_path / "disk.csv").read_bytes(), "S3 submission differs"
    assert (tmp_path / "s3.probs.csv").read_bytes() == (tmp_path / "disk.probs.csv").read_bytes()


@pytest.mark.slow
@pytest.mark.parametrize("case", ["missing", "blurred key", "absent bucket"])
def test_preflight_on_the_store_reads_nothing(case, s3_server, synth_root, onnx_model, tmp_path, capsys):
    eval_dir = synth_root / "eval"
    uri = s3_server.upload_dir(eval_dir / "images", BUCKET, "preflight/images")
    lines = (eval_dir / "info.csv").read_text().splitlines()
    info = tmp_path / "info.csv"
    first_id = lines[1].split(",")[0]
    if case == "missing":
        s3_server.client.delete_object(Bucket=BUCKET, Key=f"preflight/images/{first_id}")
        expected = f"1 of {len(lines) - 1} images are missing"
    elif case == "blurred key":
        lines[1] = lines[1].replace(first_id, first_id.replace("/", "//", 1) if "/" in first_id else "./" + first_id, 1)
        expected = "path segment"
    else:
        uri = "s3://mask-no-such-bucket/images"
        expected = "missing"
    info.write_text("\n".join(lines) + "\n")
    objects = "/" + uri.removeprefix("s3://") + "/"   # GETs of objects, not the listing (GET /bucket?list-type=2)
    before = s3_server.gets(objects)
    rc = _submit(info, uri, tmp_path / "sub.csv", onnx_model)
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert rc == 2 and len(errors) == 1 and expected in errors[0], f"{case}: rc={rc} {err[-1500:]}"
    assert s3_server.gets(objects) == before, f"{case}: an image was read before the checks passed"
    assert not (tmp_path / "sub.csv").exists(), f"{case}: output written by a refused job"
