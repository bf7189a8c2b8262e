"""The README is a front door: short, every command in it is one the CLIs accept as written, every
`make` target exists, every link resolves, and its sample answer is what `/predict` returns for the
image `make serve` suggests (docs/serving.md shows the same one)."""
from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
MAX_LINES = 150


def code_blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


def command_lines(text: str) -> list[list[str]]:
    """The shell commands of the ``bash`` blocks, continuations joined, comments and ENV=value prefixes dropped."""
    out = []
    for block in code_blocks(text, "bash"):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            tokens = shlex.split(line, comments=True)
            while tokens and re.fullmatch(r"[A-Z_]+=\S*", tokens[0]):
                tokens = tokens[1:]
            if tokens:
                out.append(tokens)
    return out


def _parsers():
    from export.cli import build_parser as export_parser
    from maskdata.cli import build_parser as data_parser
    from serving.submit_cli import build_merge_parser, build_parser as submit_parser
    from training.cli import build_parser as train_parser
    from training.tuning.cli import build_parser as tune_parser
    from workflow.cli import build_parser as run_parser

    return {"mask-data": data_parser, "mask-train": train_parser, "mask-export": export_parser,
            "mask-tune": tune_parser, "mask-run": run_parser, "mask-submit": submit_parser,
            "mask-submit merge": build_merge_parser}


def parse_as_written(tokens: list[str], parsers) -> None:
    """Parse one README command with the CLI's own parser (argparse exits 2 on an unknown flag)."""
    name, args = tokens[0], tokens[1:]
    if name == "torchrun":   # torchrun's own flags, then -m training and mask-train's
        name, args = "mask-train", args[args.index("training") + 1:]
    if name == "mask-submit" and args[:1] == ["merge"]:
        name, args = "mask-submit merge", args[1:]
    if name == "mask-run" and "--" in args:
        cut = args.index("--")
        parse_as_written(["mask-train", "--data-dir", "D", "--out", "O", *args[cut + 1:]], parsers)
        args = args[:cut]
    parsers[name]().parse_args(args)


def test_the_readme_is_a_front_door_not_a_notebook():
    lines = README.splitlines()
    assert len(lines) <= MAX_LINES, f"README.md has {len(lines)} lines; keep it at most {MAX_LINES}, details in docs/"
    dates = re.findall(r"\b20\d\d-\d\d-\d\d\b", README)
    assert dates == [], f"dated measurements belong in docs/benchmarks.md, not the README: {dates}"


def test_every_command_in_the_readme_parses_as_written():
    parsers = _parsers()
    seen = set()
    for tokens in command_lines(README):
        if tokens[0] in parsers or tokens[0] == "torchrun":
            try:
                parse_as_written(tokens, parsers)
            except SystemExit as e:
                pytest.fail(f"README command does not parse (exit {e.code}): {shlex.join(tokens)}")
            seen.add(tokens[0])
    assert {"mask-data", "mask-run", "mask-train", "mask-export", "mask-submit"} <= seen, sorted(seen)


def help_flags(parsers, name: str, sub: list[str]) -> set[str]:
    """The ``--flags`` a command's ``--help`` lists (a mask-data subcommand's own help for ``sub``)."""
    import contextlib
    import io

    text = io.StringIO()
    with contextlib.redirect_stdout(text), pytest.raises(SystemExit):
        parsers[name]().parse_args([*sub, "--help"])
    return set(re.findall(r"--[\w-]+", text.getvalue()))


def test_every_flag_in_the_readme_s_inline_commands_exists():
    """Inline fragments (`mask-export --bento-tag mask-classifier`) are partial commands: their flags
    must be ones the command's --help lists."""
    parsers = _parsers()
    spans = [shlex.split(s) for s in re.findall(r"`((?:mask-[a-z]+|torchrun) [^`]+)`", README)]
    checked = 0
    for tokens in spans:
        name, args = tokens[0], tokens[1:]
        if name == "torchrun":
            name, args = "mask-train", args[args.index("training") + 1:]
        if name == "mask-run" and "--" in args:
            train = [a for a in args[args.index("--") + 1:] if a.startswith("--")]
            assert set(train) <= help_flags(parsers, "mask-train", []), f"mask-train lacks {train}: {tokens}"
            args = args[:args.index("--")]
        sub = args[:1] if name == "mask-data" and args and not args[0].startswith("-") else []
        flags = {a for a in args if a.startswith("--")}
        assert flags <= help_flags(parsers, name, sub), f"README: {shlex.join(tokens)} uses unknown flags"
        checked += 1
    assert checked >= 4, spans


def test_every_make_target_and_link_in_the_readme_exists():
    targets = set(re.findall(r"^([\w-]+):", (REPO / "Makefile").read_text(), flags=re.M))
    used = set(re.findall(r"`make ([\w-]+)", README)) | {t[1] for t in command_lines(README) if t[0] == "make"}
    assert used and used <= targets, f"README names make targets the Makefile lacks: {sorted(used - targets)}"
    for link in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", README):
        if not link.startswith("http"):
            assert (REPO / link).exists(), f"README links to {link}, which does not exist"


def _sample(text: str) -> dict:
    return json.loads(code_blocks(text, "json")[0])


def test_the_sample_answer_is_what_predict_returns_for_the_suggested_image(tmp_path):
    from demo.build import SHIPPED, DemoConfig
    from maskdata.synth import generate
    from serving.predictor import Predictor
    from serving.schemas import Prediction

    sample = _sample(README)
    assert Prediction.model_validate(sample).model_dump(mode="json", by_alias=True).keys() == sample.keys()
    assert _sample((REPO / "docs" / "serving.md").read_text()) == sample, "docs/serving.md shows another answer"
    assert Prediction.model_json_schema()["example"] == sample, "the OpenAPI example shows another answer"
    # the check set `make serve` draws (python -m demo); the banner suggests its first image
    demo = DemoConfig()
    generate(tmp_path, people=1, eval_people=demo.eval_people, seed=demo.check_seed)
    image = sorted((tmp_path / "eval" / "images").iterdir())[0]
    assert f"@.demo/data/eval/images/{image.name} " in README, f"make serve suggests {image.name}"
    got = Predictor(str(SHIPPED)).predict([image])[0]
    assert {k: got[k] for k in ("class", "label", "uncertain")} == {k: sample[k] for k in ("class", "label", "uncertain")}
    for head, probs in sample["probabilities"].items():   # CPUs round the last digits differently
        for name, p in probs.items():
            assert abs(got["probabilities"][head][name] - p) < 1e-3, (head, name, got["probabilities"])
