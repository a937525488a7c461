"""GEdit-Bench end to end: its dataset schema in, its file layout and statistics out.

The statistics are checked against upstream `calculate_statistics.py` itself (../shared/reference,
unchanged), run on our export, as a function and as the command its EVAL.md gives.
"""

import json
import random
import subprocess
import sys

import numpy as np
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from data.manifest import SCORE_SCHEMA, empty_row, write_rows
from helpers import run_cli, shape_image
from score.gedit import COLUMNS, GROUPS, GEditError, truth


@pytest.fixture(scope="module")
def statistics_script(reference):
    pytest.importorskip("megfile", reason="megfile (a dev dependency) is what upstream's script opens files with")
    return reference / "GEdit-Bench" / "calculate_statistics.py"


@pytest.fixture(scope="module")
def upstream_statistics(statistics_script):
    namespace: dict = {"__name__": "calculate_statistics"}
    exec(compile(statistics_script.read_text(), "calculate_statistics.py", "exec"), namespace)
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
    rows[3].update(status="failed", semantics=None, quality=None, overall=None, error="invalid answer",
                   decoding="free", upstream_guess=True)
    return rows


def test_gedit_export_matches_upstream_statistics(tmp_path, upstream_statistics, statistics_script):
    rows = _score_rows(tmp_path)
    write_rows(tmp_path / "scores" / "manifest", SCORE_SCHEMA, rows)
    proc = run_cli("score.report", str(tmp_path / "scores"), "--out", str(tmp_path / "r.html"),
                   "--gedit", str(tmp_path / "g"), "--gedit-model", "mymodel")
    csv_dir = tmp_path / "g" / "mymodel" / "qwen25vl" / "eval_results_new"  # upstream's --backbone for open judges
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
        printed = proc.stdout.split(f"language {language} ")[1].split("\nRows per group")[0]
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
    # the rows behind the means: rows[3] (failed, where upstream would have guessed) is one of color_alter's 2 en rows
    counts = proc.stdout.split("Rows per group (en;")[1].split("===")[0]
    assert " ".join(counts.split("\ncolor_alter")[1].split()[:3]) == "2 1 1"
    assert " ".join(counts.split("\nbackground_change")[1].split()[:3]) == "1 0 0"
    assert "upstream would have guessed 1 score " in proc.stdout
    # upstream's own command, unmodified, reads the export (its --language choices are en and zh: en here)
    upstream = subprocess.run([sys.executable, str(statistics_script), "--model_name", "mymodel", "--save_path",
                               str(tmp_path / "g"), "--backbone", "qwen25vl", "--language", "en"],
                              capture_output=True, text=True, check=True)
    ours = proc.stdout.split("language en ")[1].split("\nRows per group")[0].strip().splitlines()[1:]
    printed = [line for line in upstream.stdout.splitlines() if line.startswith((*GROUPS, "Average", "Intersection"))]
    assert printed == [line for line in ours if line]


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


TINY_JUDGE = ["--model", "tiny:qwen3vl", "--decoding", "schema", "--max-model-len", "2048", "--max-num-seqs", "8",
              "--max-tokens", "96", "--enforce-eager", "--max-pixels", "16384", "--devices", "cpu", "--progress", "none"]


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
            *TINY_JUDGE)
    scores = pd.read_parquet(out / "manifest")
    assert len(scores) == 14 and (scores["status"] == "ok").all(), scores["error"].tolist()
    assert set(scores["template"]) == {"viescore-edit"} and set(scores["category"]) == set(GROUPS)
    row = scores.set_index("sample_id").loc["k00_cn"]
    assert json.loads(row["extra"])["key"] == "k00" and Image.open(row["source_image"]).size == (48, 32)
    proc = run_cli("score.report", str(out), "--out", str(tmp_path / "r.html"), "--gedit", str(tmp_path / "g"))
    assert "language en" in proc.stdout and "language cn" in proc.stdout
    exported = tmp_path / "g" / "scores" / "qwen25vl" / "eval_results_new" / "scores_combined_gpt_score.csv"
    from_dataset = pd.read_csv(exported)
    assert len(from_dataset) == 14
    # the same samples as a CSV, as GEdit-Bench's rows are often kept: Intersection_exist is the text "True"/"False"
    records = [{**{k: r[k] for k in ("task_type", "key", "instruction", "instruction_language")},
                "input_image": r["source_image"], "edited_image": r["image_path"],
                "Intersection_exist": str(r["Intersection_exist"])}
               for r in scores.assign(**pd.DataFrame(list(scores["extra"].map(json.loads))))
               .rename(columns={"prompt": "instruction", "category": "task_type"}).to_dict("records")]
    csv = tmp_path / "gedit.csv"
    pd.DataFrame(records).to_csv(csv, index=False)
    run_cli("score.run", "--input", str(csv), "--output-dir", str(tmp_path / "csv-scores"), "--task", "edit",
            "--id-column", "key,instruction_language", *TINY_JUDGE)
    run_cli("score.report", str(tmp_path / "csv-scores"), "--out", str(tmp_path / "c.html"), "--gedit",
            str(tmp_path / "g"), "--gedit-model", "from-csv")
    from_csv = pd.read_csv(tmp_path / "g" / "from-csv" / "qwen25vl" / "eval_results_new" /
                           "from-csv_combined_gpt_score.csv")

    def intersection(table):
        return sorted((Path(e).stem, lang) for e, lang, i in
                      zip(table["edited_image"], table["instruction_language"], table["intersection_exist"]) if i)
    assert intersection(from_csv) == intersection(from_dataset) and 0 < len(intersection(from_csv)) < 14


def test_a_key_that_is_a_path_is_refused_before_anything_is_written(tmp_path):
    rows = _score_rows(tmp_path)
    extra = json.loads(rows[5]["extra"])
    rows[5]["extra"] = json.dumps({**extra, "key": str(tmp_path / "elsewhere" / "evil")})
    write_rows(tmp_path / "scores" / "manifest", SCORE_SCHEMA, rows)
    proc = run_cli("score.report", str(tmp_path / "scores"), "--out", str(tmp_path / "r.html"),
                   "--gedit", str(tmp_path / "g"), check=False)
    assert proc.returncode == 2 and "is not a plain file name" in proc.stderr
    assert not (tmp_path / "g").exists() and not (tmp_path / "elsewhere").exists()


def test_intersection_exist_is_read_whatever_carries_it():
    import numpy as np

    assert [truth(v) for v in (True, "True", "true", "1", 1, 1.0, np.bool_(True))] == [True] * 7
    assert [truth(v) for v in (False, "False", "0", "", 0, None, float("nan"), np.bool_(False))] == [False] * 8
    with pytest.raises(GEditError, match="neither true nor false"):
        truth("maybe")
