"""What both judge stages share, without a model: the caption file written before its row."""

import os

from pool.stage import ListFeed
from score.config import ScoreConfig
from score.stage import ScoreStage


class Captioner(ScoreStage):
    """The shared part of a judge stage over rows a model would have made."""

    def rows(self, feed):
        while items := feed.take(1):
            yield {"key": items[0]["key"], "status": "ok", "caption": "a red circle", "image_path": items[0]["path"]}


def test_caption_files_are_whole_and_one_that_cannot_be_written_fails_only_its_row(tmp_path):
    ok = tmp_path / "ok"
    ok.mkdir()
    (ok / "b.txt").mkdir()  # where b's caption should go, a folder: the write fails for real
    items = [{"key": "a", "path": str(ok / "a.png")}, {"key": "b", "path": str(ok / "b.png")}]
    rows = list(Captioner(ScoreConfig(write_txt=True)).process(ListFeed(items)))
    assert rows[0]["status"] == "ok" and (ok / "a.txt").read_text() == "a red circle\n"
    assert rows[1]["status"] == "failed" and "could not write the caption file" in rows[1]["error"]
    assert sorted(os.listdir(ok)) == ["a.txt", "b.txt"]  # no temporary file left beside them
