"""Export stage: graph contract, metadata round trip, parity proof, ensemble + TTA in one graph,
FP16/INT8 variants, BentoML model store, and every bad input of ``mask-export``.

Two sources of models: the session's tiny trained run (``trained_run`` / ``onnx_model``) and a
module fixture of hand-made tiny checkpoints (random weights, BatchNorm statistics from a few
batches) with real JPEG/PNG files in the training layout, which cover ensembles and bad inputs
without another training run.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from PIL import Image

from maskdata.artifact import FORMAT_VERSION

from export.cli import main
from export.graph import EnsembleNet, build_metadata, export_onnx, load_members
from export.parity import (ParityError, check_parity, label_from_path, labels_for, labels_from_csv, list_images,
                           load_batch, torch_probs)
from export.store import model_file
from maskdata import labels
from maskdata.artifact import ModelMetadata, read_metadata
from maskdata.preprocess import Preprocess
from training.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from training.models import create_model

PRE = Preprocess(64, 48)
PEOPLE = ["000001_female_Asian_45", "000002_male_Asian_22", "000003_male_Asian_61", "004501-1_female_Asian_33"]
STEMS = ["mask1", "mask4", "incorrect_mask", "normal"]


def _cpu_session(path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _onnx_files(folder: Path) -> list[str]:
    """Every .onnx or temporary leftover in ``folder`` (a failed run must leave none)."""
    return sorted(p.name for p in folder.iterdir() if ".onnx" in p.name)


# ---------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """Real image files in the training layout: 4 people x 4 images, JPEG and PNG, 72x96."""
    root = tmp_path_factory.mktemp("export_images") / "images"
    rng = np.random.default_rng(0)
    for i, person in enumerate(PEOPLE):
        folder = root / person
        folder.mkdir(parents=True)
        for j, stem in enumerate(STEMS):
            base = rng.integers(0, 255, (96, 72, 3), dtype=np.uint8)
            base[:, : 18 * (j + 1)] //= 2 + i  # some structure so classes differ beyond noise
            Image.fromarray(base).save(folder / f"{stem}.{'png' if j == 3 else 'jpg'}")
        (folder / "._mask1.jpg").write_bytes(b"AppleDouble junk")  # hidden file: must be skipped
    return root


def _tiny_checkpoint(path: Path, seed: int, images_dir: Path, arch: str = "tiny_cnn", head: str = "multi",
                     age_bins=(30, 60), f1: float = 0.5) -> Path:
    torch.manual_seed(seed)
    model = create_model(arch, head=head, preprocess=PRE)
    model.train()
    with torch.no_grad():  # BatchNorm running statistics that are not the identity
        for _ in range(3):
            model(torch.randint(0, 256, (8, PRE.height, PRE.width, 3), dtype=torch.uint8))
    val = [str(p) for p in list_images(images_dir)]
    save_checkpoint(path, model.eval(), age_bins=age_bins, metrics={"f1": f1, "acc": f1 + 0.1},
                    epoch=1, data_fingerprint=f"fp{seed}", data_dir=str(images_dir.parent), val_images=val)
    return path


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory, images) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("export_ckpts")
    return {
        "a": _tiny_checkpoint(d / "a.pt", 0, images, f1=0.4),
        "b": _tiny_checkpoint(d / "b.pt", 1, images, f1=0.6),
        "single": _tiny_checkpoint(d / "single.pt", 2, images, head="single"),
        "small": _tiny_checkpoint(d / "small.pt", 3, images, arch="small_cnn"),
        "bins": _tiny_checkpoint(d / "bins.pt", 4, images, age_bins=(25, 55)),
    }


@pytest.fixture(scope="module")
def bento_store():
    """The session's BentoML home (tests/conftest.py points BENTOML_HOME at a temp folder before
    bentoml is imported): the store the CLI and the library both use, through public APIs only."""
    import bentoml

    home = Path(os.environ["BENTOML_HOME"])
    assert home.name.startswith("mask-tests-bentoml-"), f"tests must not use the user's store: {home}"
    return bentoml.models


@pytest.fixture(scope="module")
def ensemble_run(tmp_path_factory, ckpts, images, bento_store):
    """One CLI run: 2-member ensemble + hflip TTA + FP16 + INT8 + model store + JSON report."""
    out_dir = tmp_path_factory.mktemp("export_ensemble")
    out = out_dir / "model.onnx"
    report = out_dir / "report.json"
    rc = main(["--checkpoint", str(ckpts["a"]), str(ckpts["b"]), "--tta", "hflip", "--out", str(out),
               "--parity-images", str(images), "--fp16", "--int8", "--bento-tag", "mask-classifier",
               "--report", str(report), "-q"])
    assert rc == 0, f"ensemble export failed with exit code {rc}"
    return out, json.loads(report.read_text())


# ---------------------------------------------------------------------------------------------
# the tiny trained run (shared session fixtures)


def test_exported_graph_contract_and_batches(onnx_model, trained_run):
    proto = onnx.load(str(onnx_model))
    onnx.checker.check_model(proto, full_check=True)
    (inp,) = proto.graph.input
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    meta = read_metadata(onnx_model)
    assert inp.name == "image" and inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8, inp
    assert isinstance(dims[0], str) and dims[1:] == [meta.preprocess.height, meta.preprocess.width, 3], dims
    expected = [("logits", onnx.TensorProto.FLOAT), ("probs", onnx.TensorProto.FLOAT)]
    if meta.explain.get("available"):   # mask-export adds the class-activation maps unless --no-explain
        expected.append(("cam", onnx.TensorProto.FLOAT))
    assert [(o.name, o.type.tensor_type.elem_type) for o in proto.graph.output] == expected

    model = model_from_checkpoint(load_checkpoint(trained_run / "best.pt"))
    session = _cpu_session(onnx_model)
    rng = np.random.default_rng(1)
    for n in (1, 7, 64):
        x = rng.integers(0, 256, (n, meta.preprocess.height, meta.preprocess.width, 3), dtype=np.uint8)
        logits, probs = session.run(["logits", "probs"], {"image": x})
        assert logits.shape == probs.shape == (n, labels.NUM_CLASSES), (n, logits.shape, probs.shape)
        assert np.allclose(probs.sum(1), 1.0, atol=1e-5), probs.sum(1)
        ref = torch_probs([model], x)
        assert np.abs(ref - probs).max() < 1e-4, f"batch {n}: max diff {np.abs(ref - probs).max()}"
        soft = np.exp(logits - logits.max(1, keepdims=True))
        assert np.allclose(soft / soft.sum(1, keepdims=True), probs, atol=1e-5), "softmax(logits) != probs"


def test_metadata_round_trip(onnx_model, trained_run):
    ckpt = load_checkpoint(trained_run / "best.pt")
    meta = read_metadata(onnx_model)
    assert isinstance(meta, ModelMetadata)
    assert meta.preprocess == Preprocess.from_dict(ckpt["preprocess"]), meta.preprocess
    assert (meta.arch, meta.head, meta.precision, meta.tta) == (ckpt["arch"], ckpt["head"], "fp32", ())
    assert meta.labels == labels.label_table_dicts() and len(meta.labels) == 18
    assert meta.age_bins == tuple(ckpt["age_bins"])
    assert meta.metrics == pytest.approx(ckpt["metrics"]), meta.metrics
    # the checkpoint's folder and name, not the build machine's absolute path
    assert [s["path"] for s in meta.sources] == [f"{trained_run.name}/best.pt"], meta.sources
    assert meta.sources[0]["fingerprint"] == ckpt["data_fingerprint"]
    assert meta.format_version == FORMAT_VERSION and meta.exported_at.endswith("+00:00"), meta.exported_at
    # what serving reads from its session is the same object
    props = _cpu_session(onnx_model).get_modelmeta().custom_metadata_map
    assert ModelMetadata.from_props(props) == meta


def test_parity_on_real_images_and_failure(onnx_model, trained_run, tmp_path):
    ckpt = load_checkpoint(trained_run / "best.pt")
    paths = [Path(p) for p in ckpt["val_images"]]
    model = model_from_checkpoint(ckpt)
    report = check_parity([model], onnx_model, paths)
    assert report.ok and report.images == len(paths) > 0, report
    assert report.max_abs_diff <= 1e-4 and report.argmax_agreement == 1.0, report.summary()
    # a graph that is not this model must fail, with the figures in the message
    other = create_model(ckpt["arch"], head=ckpt["head"], preprocess=Preprocess.from_dict(ckpt["preprocess"]))
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn_like(p))
    with pytest.raises(ParityError, match=r"max \|Δprob\| = .* argmax agreement"):
        check_parity([other.eval()], onnx_model, paths)


def test_torchscript_exporter_matches_too(trained_run, tmp_path):
    ckpt = load_checkpoint(trained_run / "best.pt")
    model = model_from_checkpoint(ckpt)
    out = export_onnx(model, tmp_path / "ts.onnx", metadata=build_metadata([ckpt], [trained_run / "best.pt"]),
                      dynamo=False)
    report = check_parity([model], out, [Path(p) for p in ckpt["val_images"]])
    assert report.max_abs_diff <= 1e-4 and report.argmax_agreement == 1.0, report.summary()
    x = np.zeros((7, *read_metadata(out).preprocess.size[::-1], 3), dtype=np.uint8)
    assert _cpu_session(out).run(["probs"], {"image": x})[0].shape == (7, 18)


# ---------------------------------------------------------------------------------------------
# ensemble + TTA + variants + model store (hand-made checkpoints)


@pytest.mark.slow
def test_ensemble_with_tta_matches_pytorch(ensemble_run, ckpts, images):
    out, report = ensemble_run
    meta = read_metadata(out)
    assert meta.tta == ("hflip",) and len(meta.sources) == 2, meta
    assert meta.metrics["f1"] == pytest.approx(0.5), meta.metrics  # mean of 0.4 and 0.6
    assert report["parity"]["ok"] and report["parity"]["max_abs_diff"] <= 1e-4, report["parity"]
    # independent reference: both models, original and mirrored, softmax averaged by hand
    paths = list_images(images)
    batch = load_batch(paths, PRE)
    models = [model_from_checkpoint(ckpts[k]) for k in ("a", "b")]
    x = torch.from_numpy(batch)
    with torch.inference_mode():
        views = [x, torch.flip(x, dims=[2])]
        ref = torch.stack([torch.softmax(m(v), 1) for m in models for v in views]).mean(0).numpy()
    session = _cpu_session(out)
    got = session.run(["probs"], {"image": batch})[0]
    assert np.abs(ref - got).max() < 1e-4, np.abs(ref - got).max()
    for n in (1, 7):  # the views are batched together inside the graph: other batch sizes must still line up
        part = session.run(["probs"], {"image": batch[:n]})[0]
        assert np.abs(ref[:n] - part).max() < 1e-4, (n, np.abs(ref[:n] - part).max())
    assert (ref.argmax(1) == got.argmax(1)).all()
    # the TTA really is in the graph: without it the answer differs
    no_tta = torch_probs(models, batch)
    assert np.abs(no_tta - got).max() > 1e-4, "hflip TTA made no difference; is it in the graph?"


def test_int8_and_fp16_variants(ensemble_run, images):
    out, report = ensemble_run
    paths = list_images(images)
    y_true = np.array([label_from_path(p) for p in paths])
    batch = load_batch(paths, PRE)
    p32 = _cpu_session(out).run(["probs"], {"image": batch})[0]
    for precision in ("int8", "fp16"):
        path = out.with_name(f"model.{precision}.onnx")
        proto = onnx.load(str(path))
        onnx.checker.check_model(proto, full_check=True)
        assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
        assert all(o.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for o in proto.graph.output)
        assert read_metadata(path).precision == precision
        pv = _cpu_session(path).run(["probs"], {"image": batch})[0]
        agree = float((pv.argmax(1) == p32.argmax(1)).mean())
        rep = report["variants"][precision]
        assert rep["argmax_agreement"] == pytest.approx(agree), (rep, agree)
        assert rep["max_abs_diff"] == pytest.approx(float(np.abs(pv - p32).max()), abs=1e-6)
        assert rep["f1_delta"] is not None and rep["images"] == len(paths) == len(y_true)
        assert np.abs(pv - p32).max() < (0.05 if precision == "int8" else 1e-2), (precision, np.abs(pv - p32).max())
        assert agree >= 0.75, f"{precision} agrees with fp32 on only {agree:.0%}"
    int8 = report["variants"]["int8"]
    assert int8["speedup"] > 0 and int8["fp32_seconds"] > 0 and int8["variant_seconds"] > 0, int8
    assert any(n.op_type == "QuantizeLinear" for n in onnx.load(str(out.with_name("model.int8.onnx"))).graph.node)


def test_model_store_holds_the_export(ensemble_run, bento_store):
    import bentoml

    out, report = ensemble_run
    model = bentoml.models.get("mask-classifier:latest")
    assert str(model.tag) == report["bento_tag"], (model.tag, report["bento_tag"])
    assert Path(model.path_of("model.onnx")).read_bytes() == out.read_bytes()
    assert model_file("mask-classifier:latest") == Path(model.path_of("model.onnx"))
    assert model_file("mask-classifier:latest", precision="int8").read_bytes() == \
        out.with_name("model.int8.onnx").read_bytes()
    assert model.info.labels["arch"] == "tiny_cnn" and model.info.labels["tta"] == "hflip", model.info.labels
    assert model.info.metadata["input_size"] == [PRE.height, PRE.width], model.info.metadata
    assert model.info.metadata["metrics"]["f1"] == pytest.approx(0.5)
    assert read_metadata(model.path_of("model.onnx")).tta == ("hflip",)
    assert Path(model.path).is_relative_to(os.environ["BENTOML_HOME"]), f"{model.path} is not under the temp store"


def test_import_existing_onnx_without_reexport(onnx_model, bento_store, capsys):
    assert main(["--import-onnx", str(onnx_model), "--bento-tag", "mask-classifier:imported1"]) == 0
    path = model_file("mask-classifier:imported1")
    assert path.read_bytes() == onnx_model.read_bytes()
    assert read_metadata(path) == read_metadata(onnx_model)
    assert "mask-classifier:imported1" in capsys.readouterr().out


def test_library_ensemble_validation(ckpts):
    members = load_members([ckpts["a"], ckpts["b"]])
    assert [m["data_fingerprint"] for m in members] == ["fp0", "fp1"]
    net = EnsembleNet([model_from_checkpoint(m) for m in members], tta=("hflip",))
    logits, probs = net(torch.zeros(2, PRE.height, PRE.width, 3, dtype=torch.uint8))
    assert torch.allclose(torch.softmax(logits, 1), probs, atol=1e-6)
    with pytest.raises(ValueError, match="unknown tta 'vflip'; expected one of"):
        EnsembleNet([model_from_checkpoint(members[0])], tta=("vflip",))


def test_labels_from_layout_and_answers_csv(images, tmp_path):
    paths = list_images(images)
    assert len(paths) == len(PEOPLE) * len(STEMS), [p.name for p in paths]  # hidden ._mask1.jpg skipped
    y = labels_for(paths)
    # 000001_female_Asian_45 / incorrect_mask -> mask 1, female 1, age 45 -> group 1
    first = paths.index(images / PEOPLE[0] / "incorrect_mask.jpg")
    assert y[first] == labels.encode(1, 1, 1), y[first]
    assert label_from_path(images / "eval" / "abc.jpg") is None
    csv = tmp_path / "answers.csv"
    csv.write_text("ImageID,ans\n" + "".join(f"{p.relative_to(images).as_posix()},{c}\n" for p, c in zip(paths, y)))
    assert (labels_from_csv(paths, csv, images) == y).all()
    csv.write_text("ImageID,ans\n" + f"{paths[0].relative_to(images).as_posix()},18\n")
    with pytest.raises(ValueError, match="expected a class 0..17"):
        labels_from_csv(paths[:1], csv, images)
    with pytest.raises(ValueError, match="no row for image"):
        labels_from_csv(paths[1:2], csv, images)


# ---------------------------------------------------------------------------------------------
# bad input: one line on stderr, exit code 2, no .onnx (or temp file) left behind


def _fails(argv: list[str], out_dir: Path, capsys, expect: str) -> str:
    before = _onnx_files(out_dir) if out_dir.is_dir() else []
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2, f"exit code {rc} for {argv}; stderr: {err}"
    last = err.splitlines()[-1] if err else ""
    assert last.startswith("error: ") and "\n" not in last and "Traceback" not in err, err
    assert expect in last, f"expected {expect!r} in {last!r}"
    if out_dir.is_dir():
        assert _onnx_files(out_dir) == before, f"left behind: {set(_onnx_files(out_dir)) - set(before)}"
    return last


def test_bad_checkpoints(ckpts, images, tmp_path, capsys):
    out = tmp_path / "m.onnx"
    base = ["--out", str(out), "--parity-images", str(images)]
    _fails(["--checkpoint", str(tmp_path / "nope.pt"), *base], tmp_path, capsys, "checkpoint not found")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(ckpts["a"].read_bytes()[:2000])
    _fails(["--checkpoint", str(corrupt), *base], tmp_path, capsys, "not a readable checkpoint")
    _fails(["--checkpoint", str(ckpts["a"]), str(ckpts["small"]), *base], tmp_path, capsys,
           "different architectures")
    _fails(["--checkpoint", str(ckpts["a"]), str(ckpts["single"]), *base], tmp_path, capsys, "different head types")
    _fails(["--checkpoint", str(ckpts["a"]), str(ckpts["bins"]), *base], tmp_path, capsys, "label tables")
    relabelled = load_checkpoint(ckpts["b"])
    relabelled["labels"] = list(reversed(relabelled["labels"]))
    save_checkpoint(tmp_path / "relabelled.pt", relabelled)
    _fails(["--checkpoint", str(ckpts["a"]), str(tmp_path / "relabelled.pt"), *base], tmp_path, capsys,
           "different label tables")


def test_bad_outputs_and_options(ckpts, images, tmp_path, capsys):
    ck = ["--checkpoint", str(ckpts["a"]), "--parity-images", str(images)]
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    _fails([*ck, "--out", str(blocker / "m.onnx")], tmp_path, capsys, "is not a folder")
    _fails([*ck, "--out", str(tmp_path / "missing" / "m.onnx")], tmp_path, capsys, "does not exist")
    (tmp_path / "adir.onnx").mkdir()
    _fails([*ck, "--out", str(tmp_path / "adir.onnx")], tmp_path, capsys, "is a folder")
    _fails([*ck, "--out", str(tmp_path / "m.txt")], tmp_path, capsys, "ending in .onnx")
    _fails([*ck, "--out", str(tmp_path / "m.onnx"), "--tta", "vflip"], tmp_path, capsys, "unknown tta 'vflip'")
    _fails([*ck, "--out", str(tmp_path / "m.onnx"), "--atol", "-1"], tmp_path, capsys, "tolerance must be >= 0")
    _fails([*ck, "--out", str(tmp_path / "m.onnx"), "--min-agreement", "1.5"], tmp_path, capsys, "in [0, 1]")
    _fails(["--checkpoint", str(ckpts["a"]), "--out", str(tmp_path / "m.onnx"), "--parity-images",
            str(tmp_path / "none")], tmp_path, capsys, "image folder not found")
    _fails(["--checkpoint", str(ckpts["a"])], tmp_path, capsys, "--out MODEL.onnx is required")
    _fails([*ck, "--out", str(tmp_path / "m.onnx"), "--int8", "--labels", str(tmp_path / "no.csv")], tmp_path,
           capsys, "--labels")


def test_unreachable_recorded_images(ckpts, tmp_path, capsys):
    moved = load_checkpoint(ckpts["a"])
    moved["val_images"] = [str(tmp_path / "gone" / "mask1.jpg")]
    save_checkpoint(tmp_path / "moved.pt", moved)
    _fails(["--checkpoint", str(tmp_path / "moved.pt"), "--out", str(tmp_path / "m.onnx")], tmp_path, capsys,
           "pass --parity-images DIR")


def test_parity_failure_leaves_no_file(ckpts, images, tmp_path, capsys, monkeypatch):
    """A graph that differs from the checkpoint's model (as an exporter bug would) fails the run."""
    forward = EnsembleNet.forward

    def skewed(self, x):
        logits, probs = forward(self, x)
        shift = torch.zeros_like(logits)
        shift[:, 0] = 3.0
        return logits + shift, torch.softmax(logits + shift, 1)

    monkeypatch.setattr(EnsembleNet, "forward", skewed)
    last = _fails(["--checkpoint", str(ckpts["a"]), "--out", str(tmp_path / "m.onnx"), "--parity-images",
                   str(images), "--exporter", "torchscript"], tmp_path, capsys, "parity failed")
    assert "max |Δprob|" in last and "argmax agreement" in last, last
    assert not (tmp_path / "m.onnx").exists()


def test_bad_imports(tmp_path, bento_store, onnx_model, capsys):
    _fails(["--import-onnx", str(tmp_path / "none.onnx")], tmp_path, capsys, "ONNX model not found")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00not onnx at all")
    _fails(["--import-onnx", str(garbage)], tmp_path, capsys, "not a readable ONNX model")
    plain = onnx.load(str(onnx_model))
    del plain.metadata_props[:]
    onnx.save(plain, str(tmp_path / "plain.onnx"))
    _fails(["--import-onnx", str(tmp_path / "plain.onnx")], tmp_path, capsys, "no mask.* metadata")
    _fails(["--import-onnx", str(onnx_model), "--bento-tag", "bad tag!"], tmp_path, capsys,
           "cannot import into the BentoML model store")


def test_store_and_tests_use_bentoml_public_apis_only():
    """export/store.py and the tests reach the model store through BENTOML_HOME and bentoml.models only.
    The one internal left (the task result database for in-process task tests) is named, explained
    and pinned in tests/test_service.py."""
    repo = Path(__file__).resolve().parents[1]
    banned = ("_model_store", "BentoMLContainer", "_internal.models", "ModelStore(", "usage_stats")
    sources = {"export/store.py": (repo / "export" / "store.py").read_text()}
    sources.update({f"tests/{p.name}": p.read_text() for p in (repo / "tests").glob("*.py")
                    if p.name != Path(__file__).name})   # this file names them once, in `banned`
    found = [(name, b) for name, text in sources.items() for b in banned if b in text]
    assert found == [], f"BentoML internals in use: {found}"
