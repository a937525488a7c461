"""GEdit-Bench end to end: its dataset schema in, its file layout and statistics out.

The statistics are checked against upstream `calculate_statistics.py` itself (../shared/reference,
unchanged), run on our export; only its `megfile` import (an object-store wrapper) is given plain
local-file stand-ins.
"""

import json
import random
import sys
import types

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from data.manifest import SCORE_SCHEMA, empty_row, write_rows
from helpers import ROOT, run_cli, shape_image
from score.gedit import COLUMNS, GROUPS

REFERENCE = ROOT.parent / "shared" / "reference" / "GEdit-Bench"


@pytest.fixture(scope="module")
def upstream_statistics():
    sys.modules.setdefault("megfile", types.SimpleNamespace(smart_open=open, smart_exists=lambda p: False))
    namespace: dict = {"__name__": "calculate_statistics"}
    exec(compile((REFERENCE / "calculate_statistics.py").read_text(), "calculate_statistics.py", "exec"), namespace)
    return namespace["analyze_scores"]


def _score_rows(tmp_path) -> list[dict]:
    """Uneven groups in both languages, intersection flags mixed, scores varied; two failed rows."""
    rng = random.Random(7)
    rows = []
    for g, group in enumerate(GROUPS):
        for language in ("en", "cn"):
            for i in range(1 + (g + (language == "cn")) % 3):
                key = f"{group}-{i}"
                src = shape_image(tmp_path / "img" / f"{key}-{language}-src.png", (20 * g, 90, 200))
                out = shape_image(tmp_path / "img" / f"{key}-{language}-out.png", (200, 20 * g, 90), shape="square")
                row = empty_row(SCORE_SCHEMA)
                row.update(key=f"{key}_{language}", sample_id=f"{key}_{language}", index=len(rows), category=group,
                           prompt=f"edit {key}", source_image=str(src), image_path=str(out), attempt=1,
                           status="ok", judge_model="judge/Judge-VL", template="viescore-edit", template_version="2",
                           semantics=float(rng.randint(0, 10)), quality=float(rng.randint(0, 10)),
                           extra=json.dumps({"key": key, "instruction_language": language,
                                             "Intersection_exist": i % 2 == 0}))
                row["overall"] = (row["semantics"] * row["quality"]) ** 0.5
                rows.append(row)
    rows[3].update(status="failed", semantics=None, quality=None, overall=None, error="invalid answer")
    return rows


def test_gedit_export_matches_upstream_statistics(tmp_path, upstream_statistics):
    rows = _score_rows(tmp_path)
    write_rows(tmp_path / "scores" / "manifest", SCORE_SCHEMA, rows)
    proc = run_cli("score.report", str(tmp_path / "scores"), "--out", str(tmp_path / "r.html"),
                   "--gedit", str(tmp_path / "g"), "--gedit-model", "mymodel")
    csv_dir = tmp_path / "g" / "mymodel" / "Judge-VL" / "eval_results_new"
    combined = pd.read_csv(csv_dir / "mymodel_combined_gpt_score.csv")
    assert list(combined.columns) == COLUMNS and len(combined) == len(rows) - 1  # the failed row is left out
    for group in GROUPS:
        assert list(pd.read_csv(csv_dir / f"mymodel_{group}_gpt_score.csv").columns) == COLUMNS
    first = rows[0]
    extra = json.loads(first["extra"])
    edited = tmp_path / "g" / "mymodel" / "fullset" / first["category"] / "en" / f"{extra['key']}.png"
    source = edited.with_name(f"{extra['key']}_SRCIMG.png")
    assert np.array_equal(np.asarray(Image.open(edited)), np.asarray(Image.open(first["image_path"])))
    assert np.array_equal(np.asarray(Image.open(source)), np.asarray(Image.open(first["source_image"])))
    for language in ("en", "cn"):
        results = upstream_statistics(str(csv_dir), ["mymodel"], language)
        sem, qual, over, sem_i, qual_i, over_i = (r["mymodel"] for r in results)
        printed = proc.stdout.split(f"language {language} ")[1].split("=== GEdit")[0]
        full, inter = printed.split("\nIntersection:\n")
        expected_full = [f"{g}: {sem[g]:.3f}, {qual[g]:.3f}, {over[g]:.3f}" for g in GROUPS]
        expected_full.append(f"Average: {sem['avg_semantics']:.3f}, {qual['avg_quality']:.3f}, "
                             f"{over['avg_overall']:.3f}")
        expected_inter = [f"{g}: {sem_i[g]:.3f}, {qual_i[g]:.3f}, {over_i[g]:.3f}" for g in GROUPS]
        expected_inter.append(f"Average Intersection: {sem_i['avg_semantics']:.3f}, {qual_i['avg_quality']:.3f}, "
                              f"{over_i['avg_overall']:.3f}")
        assert full.strip().splitlines()[1:] == expected_full
        assert inter.strip().splitlines() == expected_inter
    # the macro average is not the micro one here: the groups are uneven
    en = combined[combined["instruction_language"] == "en"]
    assert f"{en['sementics_score'].mean():.3f}" not in proc.stdout.split("Average: ")[1].split(",")[0]


def test_gedit_refuses_other_categories_and_missing_groups(tmp_path):
    rows = _score_rows(tmp_path)
    rows[0]["category"] = "physical"
    write_rows(tmp_path / "a" / "manifest", SCORE_SCHEMA, rows)
    proc = run_cli("score.report", str(tmp_path / "a"), "--out", str(tmp_path / "a.html"),
                   "--gedit", str(tmp_path / "g"), check=False)
    assert proc.returncode == 2 and "['physical'] are not GEdit-Bench groups" in proc.stderr
    rows = [r for r in _score_rows(tmp_path) if r["category"] != "ps_human"]
    write_rows(tmp_path / "b" / "manifest", SCORE_SCHEMA, rows)
    proc = run_cli("score.report", str(tmp_path / "b"), "--out", str(tmp_path / "b.html"),
                   "--gedit", str(tmp_path / "g"), check=False)
    assert proc.returncode == 2 and "['ps_human']" in proc.stderr and "Traceback" not in proc.stderr


def gedit_dataset(folder, groups=GROUPS, cn: int = 3):
    """A saved dataset in GEdit-Bench's schema (Image() features), plus an `edited_image` column."""
    import datasets

    records = []
    for g, group in enumerate(groups):
        for language in ("en", "cn") if g < cn else ("en",):
            source = Image.new("RGB", (48 + 8 * g, 32), (20 * g, 120, 200))
            records.append({"task_type": group, "key": f"k{g:02d}", "instruction": f"make it red {g}",
                            "instruction_language": language, "input_image": source, "input_image_raw": source,
                            "Intersection_exist": g % 2 == 0,
                            "edited_image": Image.new("RGB", (32, 32), (200, 20 * g, 20))})
    features = datasets.Features({"task_type": datasets.Value("string"), "key": datasets.Value("string"),
                                  "instruction": datasets.Value("string"),
                                  "instruction_language": datasets.Value("string"),
                                  "input_image": datasets.Image(), "input_image_raw": datasets.Image(),
                                  "Intersection_exist": datasets.Value("bool"), "edited_image": datasets.Image()})
    datasets.Dataset.from_list(records, features=features).save_to_disk(str(folder))
    return folder


def test_gedit_dataset_scored_and_exported(tmp_path, tiny_models):
    data = gedit_dataset(tmp_path / "gedit")
    out = tmp_path / "scores"
    run_cli("score.run", "--input", str(data), "--output-dir", str(out), "--id-column", "key,instruction_language",
            "--model", "tiny:qwen3vl", "--max-model-len", "2048", "--max-num-seqs", "8", "--max-tokens", "96",
            "--enforce-eager", "--max-pixels", "16384", "--devices", "cpu", "--progress", "none")
    scores = pd.read_parquet(out / "manifest")
    assert len(scores) == 14 and (scores["status"] == "ok").all(), scores["error"].tolist()
    assert set(scores["template"]) == {"viescore-edit"} and set(scores["category"]) == set(GROUPS)
    row = scores.set_index("sample_id").loc["k00_cn"]
    assert json.loads(row["extra"])["key"] == "k00" and Image.open(row["source_image"]).size == (48, 32)
    proc = run_cli("score.report", str(out), "--out", str(tmp_path / "r.html"), "--gedit", str(tmp_path / "g"))
    assert "language en" in proc.stdout and "language cn" in proc.stdout
    exported = tmp_path / "g" / "scores" / "tiny-qwen3vl" / "eval_results_new" / "scores_combined_gpt_score.csv"
    assert len(pd.read_csv(exported)) == 14
