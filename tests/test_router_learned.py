"""The learned router: features, training on a validation split, evaluation, the CLI."""

from __future__ import annotations

import csv
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from tokenomy.cli.main import main
from tokenomy.routing import routerbench
from tokenomy.routing.learned import (
    TAIL_CHARS,
    LearnedRouter,
    dumps_artifact,
    features,
    prompt_text,
)
from tokenomy.routing.learned_train import train

MODELS = ("cheap", "dear")
OPTIONS = "\nA) red\nB) blue\nC) green\nD) white\nAnswer:"


def _write_synthetic(path: Path, n: int = 240, seed: int = 1) -> None:
    """Multiple-choice rows the cheap model gets right, code rows only the dear one does;
    the dear model costs 20 times as much."""
    rng = random.Random(seed)
    words = ["apple", "river", "stone", "cloud", "tiger", "lamp", "road", "seed"]
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(
            ["sample_id", "prompt", "eval_name", *MODELS, *(m + "|total_cost" for m in MODELS)]
        )
        for i in range(n):
            topic = " ".join(rng.choice(words) for _ in range(6))
            if i % 2:
                prompt = f"Which colour fits {topic}?{OPTIONS}"
                q = (1.0 if rng.random() < 0.95 else 0.0, 1.0)
            else:
                prompt = f"Write a python function that sorts {topic}."
                q = (1.0 if rng.random() < 0.1 else 0.0, 1.0 if rng.random() < 0.9 else 0.0)
            w.writerow([f"syn.{i}", repr([prompt]), "syn", *q, 0.0001, 0.002])


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("rb")
    _write_synthetic(d / "syn_train.csv")
    return d


@pytest.fixture(scope="module")
def artifact(synthetic: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("art") / "router.json.gz"
    args = ["router", "train", "--data", str(synthetic), "--out", str(out), "--budget", "0.6"]
    assert main(args) == 0
    return out


def test_features_are_the_same_in_every_process() -> None:
    text = "Which colour is the sky?" + OPTIONS
    code = (
        "import json,sys; from tokenomy.routing.learned import features; "
        f"print(json.dumps(sorted(features({text!r}).items())))"
    )
    outs = set()
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, check=True)
        outs.add(r.stdout)
    assert len(outs) == 1
    assert json.loads(outs.pop()) == [list(x) for x in sorted(features(text).items())]


def test_a_long_prompt_is_read_only_at_its_end() -> None:
    question = "\n\nWhich colour is the sky?" + OPTIONS
    body = {"messages": [{"role": "user", "content": "filler words " * 200_000 + question}]}
    text = prompt_text(body)
    assert len(text) <= TAIL_CHARS and text.endswith(question)
    # Parts of earlier messages fill the rest of the window, newest last.
    body = {
        "messages": [
            {"role": "system", "content": "be brief"},
            {
                "role": "user",
                "content": [{"type": "text", "text": "first"}, {"type": "text", "text": "second"}],
            },
        ]
    }
    assert prompt_text(body) == "be brief\nfirst\nsecond"


def test_shape_features_tell_multiple_choice_from_code() -> None:
    mc, code = features("Pick one." + OPTIONS), features("Write a function to add.")
    assert set(mc) != set(code)
    assert features("Pick one." + OPTIONS, word_weight=0) != features("Pick.", word_weight=0)


def test_routerbench_rows_keep_the_most_scored_duplicate_and_drop_incomplete(
    tmp_path: Path,
) -> None:
    f = tmp_path / "dup.csv"
    f.write_text(
        "sample_id,prompt,eval_name,a,b,a|total_cost,b|total_cost\n"
        "x.1,\"['q', 'q']\",t,,0.0,,0.1\n"
        "x.1,\"['q']\",t,1.0,1.0,0.2,0.3\n"
        "x.2,\"['r']\",t,1.0,,0.2,\n"
    )
    full = routerbench.load(f)
    assert [(r.sample_id, r.prompt, r.quality) for r in full.rows] == [("x.1", "q", (1.0, 1.0))]
    partial = routerbench.load(f, complete=False)
    assert [r.sample_id for r in partial.rows] == ["x.1", "x.2"]
    assert partial.rows[1].quality[1] != partial.rows[1].quality[1]  # NaN: not scored


def test_validation_split_is_by_sample_id_and_seeded() -> None:
    ids = [f"s.{i}" for i in range(2000)]
    val = [i for i in ids if routerbench.is_validation(i)]
    assert 300 < len(val) < 500
    assert val == [i for i in ids if routerbench.is_validation(i)]
    assert val != [i for i in ids if routerbench.is_validation(i, seed=7)]


def test_training_learns_which_prompts_the_cheap_model_answers(synthetic: Path) -> None:
    data = routerbench.load(synthetic)
    # Code is half the rows: sending it to the dear model spends about half its cost.
    doc, rep = train(data, alphas=(1.0,), word_weights=(0.5,), budget=0.6)
    router = LearnedRouter(json.loads(json.dumps(doc)))
    mc = "Which colour fits a lamp?" + OPTIONS
    code = "Write a python function that sorts stones."
    bar = router.default_bar
    assert router.decide(mc, bar).chosen.model == "cheap"
    assert router.decide(code, bar).chosen.model == "dear"
    q_mc, _ = router.predict(mc)
    q_code, _ = router.predict(code)
    assert q_mc[0] > 0.8 and q_code[0] < 0.3
    # Validation: cheap where it can, so near the dear model's quality at a fraction of its cost.
    assert rep.default_val.quality >= 0.85 * rep.reference_val.quality
    assert rep.default_val.cost <= 0.7 * rep.reference_val.cost
    # The bar is the knob: the lowest buys the cheap model, the highest the best predicted
    # (for multiple choice both predictions sit at the 0.99 cap: the cheaper wins the tie).
    assert router.decide(code, 0.0).chosen.model == "cheap"
    assert router.decide(code, 1.0).chosen.model == "dear"
    assert router.decide(mc, 1.0).chosen.model == "cheap"


def test_a_higher_bar_never_picks_a_cheaper_model(artifact: Path) -> None:
    router = LearnedRouter.load(artifact)
    prompts = ["Write a python function that sorts roads.", "Which colour?" + OPTIONS]
    for p in prompts:
        costs = [router.decide(p, b / 20).chosen.cost_usd for b in range(21)]
        assert costs == sorted(costs)


def test_decide_only_among_allowed_models_and_says_so_in_the_header(artifact: Path) -> None:
    router = LearnedRouter.load(artifact)
    d = router.decide("Write a python function.", 1.0, allowed=["cheap"])
    assert [s.model for s in d.ranked] == ["cheap"]
    h = d.header({"cheap": "small-model"})
    assert (
        h.startswith("model=small-model; predicted_quality=0.") and "considered=small-model:" in h
    )
    with pytest.raises(ValueError):
        router.decide("x", 0.5, allowed=[])


def test_artifact_of_another_feature_version_is_refused(artifact: Path, tmp_path: Path) -> None:
    doc = json.loads(__import__("gzip").decompress(artifact.read_bytes()))
    doc["features_version"] = 0
    bad = tmp_path / "old.json.gz"
    bad.write_bytes(dumps_artifact(doc))
    with pytest.raises(ValueError, match="retrain"):
        LearnedRouter.load(bad)


def test_eval_prints_json_with_default_point_baselines_and_an_svg(
    artifact: Path, synthetic: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    svg = tmp_path / "curve.svg"
    rc = main(
        [
            "router",
            "eval",
            "--data",
            str(synthetic),
            "--model",
            str(artifact),
            "--format",
            "json",
            "--svg",
            str(svg),
            "--split",
            "validation",
        ]
    )
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["default"]) == {"bar", "quality", "cost"}
    b = out["baselines"]
    assert set(b) == {"always-best", "always-cheapest", "oracle", "best-single", "random-mix"}
    assert b["always-best"]["model"] == "dear" and b["always-cheapest"]["model"] == "cheap"
    assert b["oracle"]["quality"] >= out["default"]["quality"]
    # The router beats a random mix of the two models costing the same.
    assert out["default"]["quality"] > b["random-mix"]["quality"]
    assert abs(b["random-mix"]["cost"] - out["default"]["cost"]) < 1e-6
    text = svg.read_text()
    assert text.startswith("<svg") and "polyline" in text and "oracle" in text
    rc = main(["router", "eval", "--data", str(synthetic), "--model", str(artifact), "--svg", ""])
    table = capsys.readouterr().out
    assert rc == 0 and "default bar" in table and "always-best (dear)" in table


def test_eval_of_data_without_the_pools_columns_is_a_clear_error(
    artifact: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = tmp_path / "other.csv"
    f.write_text("sample_id,prompt,eval_name,x,x|total_cost\na,\"['q']\",t,1.0,0.1\n")
    with pytest.raises(SystemExit) as e:
        main(["router", "eval", "--data", str(f), "--model", str(artifact), "--svg", ""])
    assert e.value.code == 2
    assert "no columns for" in capsys.readouterr().err


def test_packaged_router_is_small_and_knows_routerbench_models() -> None:
    from importlib import resources

    raw = resources.files("tokenomy.catalog").joinpath("router-routerbench.json.gz").read_bytes()
    assert len(raw) < 20_000_000
    router = LearnedRouter.load()
    assert "gpt-4-1106-preview" in router.models and len(router.models) == 11
    assert 0 < router.default_bar < 1


def test_training_on_own_traffic_scoring_one_model_per_row(tmp_path: Path) -> None:
    """Exported feedback scores only the model that served: training still works, and
    says its validation figures are its own estimates."""
    full = tmp_path / "full.csv"
    _write_synthetic(full)
    data = routerbench.load(full)
    rows = [
        routerbench.Row(
            r.sample_id,
            r.task,
            r.prompt,
            tuple(q if i == n % 2 else float("nan") for i, q in enumerate(r.quality)),
            tuple(c if i == n % 2 else float("nan") for i, c in enumerate(r.cost)),
        )
        for n, r in enumerate(data.rows)
    ]
    part = tmp_path / "part.csv"
    routerbench.write(part, data.models, rows)
    partial = routerbench.load(part, complete=False)
    assert len(partial.rows) == len(data.rows)
    doc, rep = train(partial, budget=0.6)
    assert rep.estimated and any("estimates" in line for line in rep.lines())
    router = LearnedRouter(doc)
    assert router.decide("Write a python function that sorts seeds.", 1.0).chosen.model == "dear"


def test_eval_on_the_validation_split_reproduces_the_training_report(synthetic: Path) -> None:
    from tokenomy.cli.router_cmd import evaluate

    data = routerbench.load(synthetic)
    for budget in (0.1, 0.3, 0.6):
        doc, rep = train(data, refit=False, budget=budget)
        router = LearnedRouter(json.loads(json.dumps(doc)))
        _, val = routerbench.split(data.rows)
        out = evaluate(router, routerbench.Dataset(data.models, tuple(val)))
        assert out["default"]["quality"] == pytest.approx(rep.default_val.quality, abs=1e-4)
        assert out["default"]["cost"] == pytest.approx(rep.default_val.cost, rel=1e-4)


def test_cross_validation_routes_every_row_once_and_its_default_spends_within_budget(
    synthetic: Path,
) -> None:
    data = routerbench.load(synthetic)
    doc, rep = train(data, alphas=(1.0,), word_weights=(0.5,), budget=0.6, folds=3)
    assert rep.cv is not None and len(rep.cv) == 3
    assert sum(f["rows"] for f in rep.cv) == len(data.rows)
    # The default bar's λ, applied to rows its model never saw, spends within the budget
    # (summed over the folds) and still buys the dear model for code.
    share = sum(f["cost"] for f in rep.cv) / sum(f["cost"] / f["share"] for f in rep.cv)
    assert 0.3 < share <= 0.6
    assert all(f["quality"] >= 0.85 * f["reference_quality"] for f in rep.cv)
    assert any("3-fold cross-validation" in line for line in rep.lines())
    router = LearnedRouter(json.loads(json.dumps(doc)))
    assert (
        router.decide("Write a python function that sorts stones.", router.default_bar).chosen.model
        == "dear"
    )


def test_a_bar_between_two_settings_mixes_them_by_a_hash_of_the_prompt(artifact: Path) -> None:
    router = LearnedRouter.load(artifact)
    (q_lo, lam_lo), (q_hi, lam_hi) = router.table[0], router.table[1]
    assert lam_lo > lam_hi
    prompts = [f"Which colour fits item {i}?{OPTIONS}" for i in range(2000)]
    bar = q_lo + 0.25 * (q_hi - q_lo)
    lams = [router.lam_for(bar, p) for p in prompts]
    assert set(lams) == {lam_lo, lam_hi}
    assert 0.2 < lams.count(lam_hi) / len(lams) < 0.3
    # The same prompt always gets the same setting; a bar on a setting gets only that one.
    assert [router.lam_for(bar, p) for p in prompts] == lams
    assert {router.lam_for(q_hi, p) for p in prompts} == {lam_hi}
    assert {router.lam_for(q_lo, p) for p in prompts} == {lam_lo}
    assert router.decide(prompts[0], bar).lam == lams[0]


def test_signal_bench_finds_the_per_prompt_signal_a_per_task_prior_misses(
    synthetic: Path,
) -> None:
    """bench/router_signal.py: within one task, the text tells which prompts the cheap
    model answers (high AUC), so the learned router beats knowing the task alone (at a
    budget that lets it send the code rows, half of them, to the dear model)."""
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root / "src")}
    r = subprocess.run(
        [
            sys.executable,
            str(root / "bench" / "router_signal.py"),
            "--data",
            str(synthetic),
            "--budget",
            "0.6",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    lines = r.stdout.splitlines()
    row = next(line for line in lines if line.startswith("| syn |"))
    cheap_auc = float(row.split("|")[3])
    assert cheap_auc > 0.9
    learned = float(next(line for line in lines if line.startswith("| learned")).split("|")[2])
    prior = float(next(line for line in lines if line.startswith("| per-task")).split("|")[2])
    assert learned > prior + 0.1
