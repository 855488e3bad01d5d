"""training/reproduce.py's claim rows: the verdict rule (paired by seed) and the written table."""
import json

from training import reproduce as R


def test_verdict_is_paired_by_seed():
    assert R._verdict([0.60, 0.62], [0.50, 0.55]) == "reproduces"
    assert R._verdict([0.60, 0.50], [0.50, 0.55]) == "no clear effect"           # one seed goes the other way
    assert R._verdict([0.505, 0.506], [0.50, 0.50]) == "no clear effect"         # same way, under 0.01
    assert R._verdict([0.40, 0.42], [0.50, 0.55]) == "does not reproduce"
    assert R._verdict([0.10, 0.12], [0.20, 0.25], higher_is_better=False) == "reproduces"   # the gap shrinks
    assert R._verdict([float("nan")], [0.5]) == "n/a"


def _metrics(**over):
    base = {k: 0.5 for k in R.METRICS}
    base.update(over)
    return base


def test_claim_rows_compare_each_paper_with_the_control(tmp_path):
    results = {r: [_metrics(), _metrics()] for r in R.RECIPES}
    results["pcclip"] = [_metrics(diff_acc=0.8), _metrics(diff_acc=0.7)]
    results["paraclip"] = [_metrics(**{"AO@10": 0.2}), _metrics(**{"AO@10": 0.3})]
    rows = {(p, c): v for p, c, _, _, v in R.claims(results, _metrics())}
    assert rows[("PC-CLIP", "raises difference classification (chance 0.5)")] == "reproduces"
    assert rows[("ParaCLIP", "raises AO@10 paraphrase consistency")] == "does not reproduce"
    assert rows[("AlignCLIP", "shrinks the modality gap")] == "no clear effect"
    out = tmp_path / "RESULTS.md"
    R.write_markdown(str(out), results, _metrics(), {r: 10 for r in R.RECIPES}, "cmd", {"seeds": "0 1"}, ["## Notes"])
    text = out.read_text()
    assert "| PC-CLIP | raises difference classification (chance 0.5) | pcclip 0.750 | clip 0.500" in text
    assert text.count("\n| ") >= 1 + len(rows) + 1 + len(R.RECIPES) + 1
    json.dumps(results)  # the results are plain JSON
