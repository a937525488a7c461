"""score.report and the notebook, on a real generated-and-scored run."""

import math
import re
import shutil
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from data.manifest import SCORE_SCHEMA, write_rows
from helpers import ROOT, run_cli, shape_image


def _cell(html_text: str, table: str, row: str, column: str) -> str:
    """The text of one cell of a report table (pandas to_html layout)."""
    block = re.search(rf'<div data-table="{re.escape(table)}">(.*?)</div>', html_text, re.S).group(1)
    header = re.findall(r"<th>(.*?)</th>", block.split("</thead>")[0])
    for tr in re.findall(r"<tr>(.*?)</tr>", block.split("<tbody>")[1], re.S):
        head = re.search(r"<th>(.*?)</th>", tr).group(1)
        if head == row:
            cells = re.findall(r"<td>(.*?)</td>", tr)
            return cells[header.index(column) - 1]
    raise AssertionError(f"no row {row} in {table}")


def test_report_tables_match_the_parquet_and_embed_images(scored_run, tmp_path):
    out = tmp_path / "report.html"
    proc = run_cli("score.report", str(scored_run), "--out", str(out))
    text = out.read_text()
    scores = pd.read_parquet(scored_run / "scores" / "manifest")
    for category, group in scores.groupby("category"):
        assert _cell(text, "Scores per category", category, "n") == str(len(group))
        assert _cell(text, "Scores per category", category, "overall_mean") == f"{group['overall'].mean():.2f}"
        assert _cell(text, "Scores per category", category, "quality_mean") == f"{group['quality'].mean():.2f}"
    micro, macro = "all (micro: mean over samples)", "all (macro: mean of category means)"
    assert _cell(text, "Scores per category", micro, "n_ok") == str((scores["status"] == "ok").sum())
    assert _cell(text, "Scores per category", micro, "n_failed") == str((scores["status"] == "failed").sum())
    ok = scores[scores["status"] == "ok"]
    assert _cell(text, "Scores per category", macro, "overall_mean") == \
        f"{ok.groupby('category')['overall'].mean().mean():.2f}"
    assert "tiny:qwen3vl | template viescore-t2i v2" in text
    assert text.count("data:image/png;base64,") >= 2 + 8  # plots + best/worst thumbnails
    assert "scores per category" in proc.stdout and str(out.resolve()) in proc.stdout


def _shifted_copy(run: Path, dest: Path, category: str, delta: float) -> Path:
    """Run B: run A's scores with `delta` added to the overall score of one category."""
    shutil.copytree(run, dest)
    table = pq.read_table(dest / "scores" / "manifest").to_pylist()
    shutil.rmtree(dest / "scores" / "manifest")
    for row in table:
        if row["category"] == category:
            row["overall"] += delta
    write_rows(dest / "scores" / "manifest", SCORE_SCHEMA, table)
    return dest


def test_compare_two_runs(scored_run, tmp_path):
    b = _shifted_copy(scored_run, tmp_path / "b", "objects", 1.5)
    proc = run_cli("score.report", str(scored_run), str(b))
    lines = {line.split()[0]: line.split() for line in proc.stdout.splitlines() if line.split()}
    n, mean_a, mean_b, diff, win = lines["objects"][1:6]
    assert int(n) == 3 and math.isclose(float(diff), 1.5) and float(win) == 1.0
    assert float(lines["shapes"][4]) == 0.0 and float(lines["shapes"][5]) == 0.5  # ties count half
    assert math.isclose(float(lines["all"][4]), 1.5 / 3, abs_tol=0.01)


def test_notebook_runs_against_a_run(scored_run, monkeypatch, tmp_path):
    import nbformat
    from nbclient import NotebookClient

    from data.manifest import GEN_SCHEMA, ManifestWriter

    run = tmp_path / "run"
    shutil.copytree(scored_run, run)
    first = pd.read_parquet(run / "manifest").iloc[[0]]
    late = first.astype(object).where(first.notna(), None).to_dict("records")[0]
    writer = ManifestWriter(run / "manifest", GEN_SCHEMA, tag="worker9")  # a run still writing: a journal only
    writer.add({**late, "key": "late-one", "sample_id": "late-one", "index": 99})
    monkeypatch.setenv("GENSCORE_RUN_DIR", str(run))
    notebook = nbformat.read(ROOT / "notebooks" / "analysis.ipynb", as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 2
    notebook.cells.append(nbformat.v4.new_code_cell("print(sorted(gen['key'])[-1], len(gen))"))
    client = NotebookClient(notebook, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(ROOT / "notebooks")}})
    client.execute()
    assert notebook.cells[-1].outputs[0]["text"].strip() == "q8 10"  # 9 from shards, the journaled one too


def test_report_of_a_run_not_scored_yet(scored_run, tmp_path):
    run = tmp_path / "gen-only"
    shutil.copytree(scored_run, run, ignore=shutil.ignore_patterns("scores"))
    proc = run_cli("score.report", str(run), "--out", str(tmp_path / "g.html"))
    assert "judge: no scores" in proc.stdout and "generated per category (not scored yet)" in proc.stdout
    gen = pd.read_parquet(run / "manifest")
    assert _cell((tmp_path / "g.html").read_text(), "Generated per category (not scored yet)", "all", "n_ok") == \
        str((gen["status"] == "ok").sum())
    assert (tmp_path / "g.html").read_text().count("data:image/png;base64,") >= 8  # the generated images


def test_export_dataset_joins_gen_and_score_rows_with_images(scored_run, tmp_path):
    import datasets
    import numpy as np
    from PIL import Image

    run_cli("score.report", str(scored_run), "--out", str(tmp_path / "r.html"), "--export-dataset", str(tmp_path / "ds"))
    dataset = datasets.load_from_disk(str(tmp_path / "ds"))
    scores = pd.read_parquet(scored_run / "scores" / "manifest").set_index("key")
    gen = pd.read_parquet(scored_run / "manifest").set_index("key")
    assert len(dataset) == len(scores) and isinstance(dataset.features["image"], datasets.Image)
    for row in dataset:
        assert row["overall"] == scores.loc[row["key"], "overall"] and row["gen_seed"] == gen.loc[row["key"], "seed"]
        on_disk = np.asarray(Image.open(scored_run / gen.loc[row["key"], "image_path"]).convert("RGB"))
        assert np.array_equal(np.asarray(row["image"].convert("RGB")), on_disk)


def test_exports_stay_inside_their_folders_and_uploads_are_private(tmp_path, monkeypatch):
    import json

    import datasets

    from data.manifest import SCORE_SCHEMA, empty_row, write_rows
    from score import report

    inputs = tmp_path / "inputs"
    good = shape_image(inputs / "a.png", (200, 0, 0))
    (tmp_path / "private").mkdir()
    secret = tmp_path / "private" / "id_ed25519"
    secret.write_text("-----BEGIN OPENSSH PRIVATE KEY-----")
    outside = shape_image(tmp_path / "elsewhere" / "b.png", (0, 200, 0))
    folder = tmp_path / "scores"
    rows = []
    for i, (path, status) in enumerate(((good, "ok"), (secret, "failed"), (outside, "ok"))):
        row = empty_row(SCORE_SCHEMA)
        row.update(key=f"k{i}", sample_id=f"k{i}", index=i, attempt=1, status=status, image_path=str(path),
                   judge_model="j", template="t", template_version="1", category="c",
                   extra=json.dumps({"key": f"/tmp/evil{i}", "instruction_language": "en"}))
        rows.append(row)
    write_rows(folder / "manifest", SCORE_SCHEMA, rows)
    (folder / "score.json").write_text(json.dumps({"config": {"input": str(inputs / "in.jsonl")}}))
    (inputs / "in.jsonl").write_text("")
    pushed = {}
    monkeypatch.setattr(datasets.Dataset, "push_to_hub", lambda self, repo, **kw: pushed.update(repo=repo, **kw))
    argv = [str(folder), "--out", str(tmp_path / "r.html"), "--export-dataset", str(tmp_path / "ds")]
    assert report.main([*argv, "--push-to-hub", "me/scores"]) == 0
    dataset = datasets.load_from_disk(str(tmp_path / "ds"))
    embedded = {row["key"]: row["image"] is not None for row in dataset}
    assert embedded == {"k0": True, "k1": False, "k2": False}  # not the key file, nor a file outside the run's inputs
    assert pushed == {"repo": "me/scores", "private": True}
    report.main([*argv, "--push-to-hub", "me/scores", "--public"])
    assert pushed["private"] is False
