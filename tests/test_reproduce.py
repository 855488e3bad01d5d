"""training/reproduce.py's claim rows: the paired 95 % interval, the verdict read from it, and the
written table (with the SharedCLIP rows when the scratch runs are there)."""
import json
import math

import pytest

from training import reproduce as R


def test_paired_interval_is_the_student_t_interval_of_the_differences():
    mean, lo, hi = R.paired_interval([0.6, 0.7, 0.8], [0.5, 0.5, 0.5])
    d = [0.1, 0.2, 0.3]  # mean 0.2, sd 0.1, t(0.975, 2) = 4.302652...
    assert mean == pytest.approx(0.2)
    assert (hi - lo) / 2 == pytest.approx(4.302652729749464 * 0.1 / math.sqrt(3))
    assert R.paired_interval(d, [0, 0, 0], higher_is_better=False)[0] == pytest.approx(-0.2)
    assert math.isnan(R.paired_interval([0.6], [0.5])[1])


def test_verdict_reads_the_interval():
    assert R._verdict([0.60, 0.62, 0.61], [0.50, 0.55, 0.52]) == "reproduces"
    assert R._verdict([0.60, 0.50, 0.58], [0.50, 0.55, 0.52]) == "no clear effect"   # the interval holds 0
    assert R._verdict([0.40, 0.42, 0.41], [0.50, 0.55, 0.52]) == "does not reproduce"
    assert R._verdict([0.10, 0.12, 0.11], [0.20, 0.25, 0.22], higher_is_better=False) == "reproduces"
    assert R._verdict([float("nan")], [0.5]) == "n/a"
    assert R._verdict([0.6], [0.5]).startswith("n/a")   # one seed: no interval, no verdict


def _metrics(**over):
    base = {k: 0.5 for k in R.METRICS}
    base.update(over)
    return base


def test_claim_rows_compare_each_paper_with_the_control(tmp_path):
    results = {r: [_metrics(), _metrics(), _metrics()] for r in (*R.RECIPES, *R.SCRATCH)}
    results["pcclip"] = [_metrics(diff_acc=x) for x in (0.8, 0.7, 0.75)]
    results["paraclip"] = [_metrics(**{"AO@10": x}) for x in (0.2, 0.3, 0.25)]
    results["shared-alignclip"] = [_metrics(modality_gap=x) for x in (0.3, 0.35, 0.32)]
    rows = {(p, c): (d, v) for p, c, _, _, d, v in R.claims(results, _metrics())}
    assert rows[("PC-CLIP", "raises difference classification (chance 0.5)")][1] == "reproduces"
    assert rows[("ParaCLIP", "raises AO@10 paraphrase consistency")][1] == "does not reproduce"
    assert rows[("AlignCLIP", "IMSep shrinks the modality gap")][1] == "no clear effect"
    shared = [k for k in rows if k[1].startswith("SharedCLIP")]
    assert len(shared) == 2 and rows[shared[1]][1] == "reproduces"   # the gap shrank (0.32 vs 0.5)
    assert rows[("PC-CLIP", "raises difference classification (chance 0.5)")][0].startswith("+0.250 [")
    out = tmp_path / "RESULTS.md"
    R.write_markdown(str(out), results, _metrics(), {r: 10 for r in results}, "cmd", {"seeds": "0 1 2"}, ["## Notes"])
    text = out.read_text()
    assert "## Claims (3 seeds)" in text
    assert ("| PC-CLIP | raises difference classification (chance 0.5) | pcclip 0.750 | clip 0.500; base 0.500 "
            "| +0.250 [") in text
    assert text.count("\n| ") >= 1 + len(rows) + 1 + len(results) + 1
    json.dumps(results)  # the results are plain JSON


def test_claims_without_scratch_runs_have_no_sharedclip_rows():
    results = {r: [_metrics(), _metrics()] for r in R.RECIPES}
    assert not [r for r in R.claims(results, _metrics()) if r[1].startswith("SharedCLIP")]


def test_a_run_that_did_not_learn_makes_its_claims_not_measurable():
    """A collapsed model (every feature one point: zero-shot at chance, alignment 1.0, gap ~0) 'wins'
    the alignment and gap claims by its interval; the verdict must say it did not learn instead."""
    results = {r: [_metrics(), _metrics(), _metrics()] for r in (*R.RECIPES, *R.SCRATCH)}
    results["shared-alignclip"] = [_metrics(zs_top1=z, alignment=1.0, modality_gap=0.01) for z in (0.034, 0.2, 0.3)]
    rows = {c: v for _, c, _, _, _, v in R.claims(results, _metrics())}
    shared = [v for c, v in rows.items() if c.startswith("SharedCLIP")]
    assert shared and all(v == "not measurable: did not learn (shared-alignclip in 1 of 3 seeds)" for v in shared)
    assert rows["IMSep raises the alignment score"] == "no clear effect"   # other rows keep their verdict
    assert R.did_not_learn([_metrics(zs_top1=float("nan"))]) == 1
