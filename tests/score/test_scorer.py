"""The Python API (score/scorer.py): one real CPU replica of the tiny judge, items in, rows out."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import psutil
import pytest
from PIL import Image

from helpers import final_rows
from score.config import ScoreConfig
from score.scorer import ItemError, Scorer

# the shared scored run's judge settings (helpers.TINY_SCORE) as fields
JUDGE = dict(model="tiny:qwen3vl", decoding="schema", max_model_len=2048, max_num_seqs=8, max_tokens=256,
             enforce_eager=True, max_pixels=16384, devices="cpu", progress="none")


@pytest.fixture(scope="module")
def scorer(tiny_models):
    with Scorer(**JUDGE) as scorer:
        assert scorer.wait_ready(300)
        yield scorer


def test_rows_are_score_runs_rows_whatever_form_the_image_takes(scorer, scored_run):
    expected = final_rows(scored_run / "scores")
    paths = {key: row["image_path"] for key, row in expected.iterrows()}
    forms = {
        "path": lambda p: p,
        "bytes": lambda p: Path(p).read_bytes(),
        "pil": lambda p: Image.open(p),
        "numpy": lambda p: np.asarray(Image.open(p).convert("RGB")),
    }
    for form, convert in forms.items():
        items = [{"id": key, "prompt": expected.loc[key, "prompt"], "image": convert(p)} for key, p in paths.items()]
        rows = scorer.score(items)
        assert [r["key"] for r in rows] == list(paths), form
        for row in rows:
            want = expected.loc[row["key"]]
            assert row["status"] == "ok", (form, row["error"])
            assert json.loads(row["raw_response"]) == json.loads(want["raw_response"]), form
            assert row["overall"] == pytest.approx(want["overall"]), form
            assert row["image_path"] == (paths[row["key"]] if form == "path" else None)
    assert not list(scorer._spill.iterdir()), "images sent as bytes wait in memory files until their rows are back"


def test_ascore_and_edits_with_a_source(scorer):
    source = Image.new("RGB", (80, 60), (200, 30, 30))
    edited = Image.new("RGB", (80, 60), (30, 30, 200))

    async def both():
        return await asyncio.gather(scorer.ascore({"id": "e", "instruction": "make it blue", "image": edited,
                                                   "source_image": source, "round": 3}),
                                    scorer.ascore({"id": "t", "prompt": "a blue card", "image": edited}))
    edit, t2i = asyncio.run(both())
    assert (edit["key"], edit["task"], edit["status"]) == ("e", "edit", "ok")
    assert json.loads(edit["extra"]) == {"round": 3}, "fields the API does not know are kept in `extra`"
    assert (t2i["key"], t2i["task"], t2i["status"]) == ("t", "t2i", "ok")


@pytest.mark.parametrize("item, reason", [
    ({"id": "a", "prompt": "p"}, "no image"),
    ({"id": "a", "prompt": "p", "image": b"not an image"}, "cannot be read"),
    ({"id": "a", "prompt": "p", "image": "/no/such/file.png"}, "cannot be read"),
    ({"id": "a", "prompt": "p", "image": np.zeros((4, 4), dtype=np.float64)}, "uint8"),
])
def test_an_item_that_cannot_be_judged_is_refused_before_it_is_queued(scorer, item, reason):
    with pytest.raises(ItemError, match=reason):
        scorer.submit([{"id": "fine", "prompt": "p", "image": Image.new("RGB", (8, 8))}, item])
    assert scorer.work.pending == 0, "nothing of a refused call is queued"


def test_from_config_and_close_stops_every_process(tmp_path, tiny_models):
    config = tmp_path / "judge.yaml"
    config.write_text("model: tiny:qwen3vl\ndecoding: schema\nmax_model_len: 2048\nenforce_eager: true\n"
                      "max_pixels: 16384\nmax_tokens: 32\n")
    log = tmp_path / "log"
    before = set(psutil.Process().children(recursive=True))  # the module's other Scorer
    with Scorer.from_config(config, devices="cpu", log_dir=str(log)) as scorer:
        assert scorer.config.max_tokens == 32 and isinstance(scorer.config, ScoreConfig)
        row = scorer.score([{"id": "x", "prompt": "p", "image": Image.new("RGB", (32, 32), (1, 2, 3))}])[0]
        children = [p for p in psutil.Process().children(recursive=True)
                    if p not in before and "resource_tracker" not in " ".join(p.cmdline())]  # python's own helper
        assert row["status"] == "ok" and children
    gone, alive = psutil.wait_procs(children, timeout=30)
    assert not alive
    from data.manifest import read_manifest

    logged = read_manifest(log / "manifest").to_pylist()
    assert [(r["sample_id"], r["overall"]) for r in logged] == [("x", row["overall"])]
    assert json.loads((log / "score.json").read_text())["identity"]["model"] == "tiny:qwen3vl"
