"""The composition check: a combination counts as composing only when it beats each of its own
single-skill rows beyond 1.96 paired standard errors, in the column's direction."""

from __future__ import annotations

import json

from lorasoups.report.analysis import analyse
from lorasoups.report.tables import analysis_markdown

N = 40


def _write(run, method, gold_nll):
    p = run / "eval" / method / "qa" / "samples.jsonl"
    p.parent.mkdir(parents=True)
    p.write_text("".join(json.dumps({"id": f"q-{i}", "completion": None, "scores": {"nll_gold": v}}) + "\n" for i, v in enumerate(gold_nll)))
    return str(p.relative_to(run))


def _doc(run, rows):
    methods = {"base": {"method": "base", "skills": []}, "know": {"method": "skill", "skills": ["know"]},
               "qa": {"method": "skill", "skills": ["qa"]},
               "soup": {"method": "linear", "kind": "merge", "skills": ["know", "qa"]},
               "other_soup": {"method": "linear", "kind": "merge", "skills": ["know2", "qa"]},
               "know2": {"method": "skill", "skills": ["know2"]}}
    results, samples = {}, {}
    for m, vals in rows.items():
        results[m] = {"qa": {"metrics": {"nll_gold": {"value": sum(vals) / len(vals), "stderr": 0.01, "n": len(vals)}}}}
        samples[m] = {"qa": _write(run, m, vals)}
    return {"methods": {k: v for k, v in methods.items() if k in rows}, "results": results, "samples": samples,
            "columns": [{"label": "gold NLL", "task": "qa", "metric": "nll_gold", "better": "lower", "target": True}]}


def _noise(i):  # deterministic, mean ~0, spread 0.01
    return ((i * 37) % 11 - 5) / 500


def test_beats_both_singles_beyond_noise(tmp_path):
    rows = {"base": [2.0 + _noise(i) for i in range(N)],
            "know": [1.8 + _noise(i + 1) for i in range(N)],
            "qa": [1.7 + _noise(i + 2) for i in range(N)],
            "soup": [1.6 + _noise(i + 3) for i in range(N)]}
    an = analyse(_doc(tmp_path, rows), tmp_path)
    (c,) = an["composition"]
    assert c["method"] == "soup" and c["composes"]
    by = {v["single"]: v for v in c["vs"]}
    assert abs(by["know"]["gain"] - 0.2) < 0.01 and abs(by["qa"]["gain"] - 0.1) < 0.01  # lower NLL = positive
    md = analysis_markdown({**_doc(tmp_path / "x", rows), "analysis": an})
    assert "## Composition check" in md and "**yes**" in md


def test_between_the_singles_or_within_noise_is_no(tmp_path):
    rows = {"base": [2.0] * N, "know": [1.8 + _noise(i) for i in range(N)],
            "qa": [1.6 + _noise(i + 1) for i in range(N)],
            "soup": [1.7 + _noise(i + 2) for i in range(N)],            # between the two singles
            "know2": [1.62 + _noise(i + 3) for i in range(N)],
            "other_soup": [1.5999 + 0.05 * (-1) ** i for i in range(N)]}  # better than qa by 1e-4, s.e. ~8e-3
    an = analyse(_doc(tmp_path, rows), tmp_path)
    co = {c["method"]: c for c in an["composition"]}
    assert not co["soup"]["composes"]
    assert [v["single"] for v in co["soup"]["vs"]] == ["know", "qa"]
    assert not co["other_soup"]["composes"]  # its own singles are know2 and qa, not know
    assert [v["single"] for v in co["other_soup"]["vs"]] == ["qa", "know2"]
    assert co["other_soup"]["vs"][0]["gain"] > 0 and not co["other_soup"]["vs"][0]["beyond"]
