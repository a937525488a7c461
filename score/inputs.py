"""What to score: a gen run folder, a table of image paths, an image folder, or a design layout.

Every source yields samples in the shape `data.sources` defines, with `image_path` the image
to judge and, for edits, `source_image` the input image.

The design-element layout: `jsons/<doc>.json` lists a document's elements
(`{"elements": [{"id": ..., "type": ...}, ...]}`), `json_detail/<doc>.json` gives details per
element id (at least its `type`, optionally `image`, a path relative to the layout folder;
default `images/<doc>/<id>.png`), relative to the layout folder or to --image-root when given.
Text and image elements are not captioned; `--task auto` captions a layout.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from data.manifest import ManifestReader, latest_records, read_manifest
from data.rundir import COMPLETE
from data.sources import Columns, InputError, check_unique, load_samples, safe_name

SKIPPED_ELEMENTS = {"TextElement", "ImageElement"}


def is_run_dir(path: Path) -> bool:
    return (path / "manifest").is_dir() and (path / "run.json").exists()


def is_layout(path: Path) -> bool:
    return (path / "jsons").is_dir()


def newest_run(root: Path = Path("runs")) -> Path:
    runs = [p for p in root.glob("*") if is_run_dir(p)] if root.is_dir() else []
    if not runs:
        raise InputError(f"no gen run found under {root}/; run `python -m gen.run` first or pass --input")
    return max(runs, key=lambda p: (p / "run.json").stat().st_mtime)


def run_samples(run: Path) -> list[dict]:
    """The ok rows of a gen run, as samples: the generated image is what gets judged."""
    table = read_manifest(run / "manifest")
    if table is None:
        raise InputError(f"{run}/manifest holds no rows yet")
    return gen_samples(run, latest_records(table).values())


def gen_samples(run: Path, rows) -> list[dict]:
    fields = ("index", "sample_id", "key", "prompt", "category", "extra", "source_image", "task")
    ok = sorted((r for r in rows if r["status"] == "ok"), key=lambda r: r["index"])
    return [{**{f: r[f] for f in fields}, "image_path": str((run / r["image_path"]).resolve())} for r in ok]


def wait_for_run(run: Path, timeout_s: float) -> dict:
    """The config of a gen run that may not have started yet (`--follow` launched first)."""
    deadline = time.monotonic() + timeout_s
    while not (run / "run.json").exists():
        if time.monotonic() > deadline:
            raise InputError(f"{run}: no gen run started there within {timeout_s:.0f} s")
        time.sleep(1)
    return json.loads((run / "run.json").read_text())["config"]


class FollowRun:
    """A gen run's ok rows as they land (journaled rows included), until it is marked complete.
    A run that stops without completing (killed) is waited for: rerun gen and the rows go on."""

    def __init__(self, run: Path, timeout_s: float, gen_process=None):
        self.run, self.timeout_s, self.gen_process = run, timeout_s, gen_process  # gen_process: ours, if we started it
        self.reader = ManifestReader(run / "manifest")
        self.seen: set[str] = set()
        self.last_new = self.last_said = time.monotonic()

    def complete(self) -> bool:
        """The run is complete: its marker is there and newer than its run.json (a marker left by an earlier
        run of the same folder, before a rerun has cleared it, does not end the follow)."""
        marker, config = self.run / COMPLETE, self.run / "run.json"
        try:
            return marker.stat().st_mtime >= config.stat().st_mtime
        except FileNotFoundError:
            return False

    def poll(self) -> tuple[list[dict], bool]:
        last = self.complete()  # looked at first: a complete run's rows are all on disk by now
        rows = self.reader.new_rows() if (self.run / "manifest").is_dir() else []
        new = [s for s in gen_samples(self.run, rows) if s["key"] not in self.seen]
        self.seen.update(s["key"] for s in new)
        now = time.monotonic()
        code = self.gen_process.poll() if self.gen_process is not None else None
        if code is not None and not last and not self.complete():
            raise InputError(f"generation stage ended (exit code {code}) before finishing; rerun the command "
                             "(nothing generated or scored is lost)")
        if new or last:
            self.last_new = now
        elif now - self.last_new > self.timeout_s:
            raise InputError(f"{self.run}: no new row for {self.timeout_s:.0f} s and the run is not complete; "
                             "rerun its gen command, then score --follow again (nothing scored is lost)")
        elif now - self.last_said > 60:
            self.last_said = now
            print(f"score: waiting for {self.run} ({len(self.seen)} rows so far)", file=sys.stderr, flush=True)
        return new, last


def layout_samples(root: Path, image_root: str | None = None) -> list[dict]:
    samples = []
    for layout_file in sorted((root / "jsons").glob("*.json")):
        doc = layout_file.stem
        layout = json.loads(layout_file.read_text(encoding="utf-8"))
        detail_file = root / "json_detail" / f"{doc}.json"
        details = json.loads(detail_file.read_text(encoding="utf-8")) if detail_file.exists() else {}
        for element in layout.get("elements", []):
            eid = str(element["id"])
            info = {**element, **details.get(eid, {})}
            if info.get("type") in SKIPPED_ELEMENTS:
                continue
            images = Path(image_root) if image_root else root
            image = (images / info.get("image", f"images/{doc}/{eid}.png")).resolve()
            if not image.is_relative_to(images.resolve()):
                raise InputError(f"{detail_file}: element {eid} image leaves {images}")
            sample_id = f"{doc}/{eid}"
            samples.append({
                "index": len(samples), "sample_id": sample_id, "key": safe_name(sample_id), "prompt": None,
                "category": info.get("type"), "source_image": None, "image_path": str(image),
                "extra": json.dumps({"document": doc, "element": eid}),
            })
    if not samples:
        raise InputError(f"{root}: no elements to caption in jsons/")
    check_unique(samples, root / "jsons")
    return samples


def file_samples(path: str, columns: Columns, image_root: str | None, image_store: Path | None) -> list[dict]:
    samples = load_samples(path, columns, image_root=image_root, image_store=image_store)
    for s in samples:
        if s["image_path"] is None:  # a table with one image column: that is the image judged
            s["image_path"], s["source_image"] = s["source_image"], None
    return samples


def default_output(input_path: str) -> Path:
    """Where scores go unless --output-dir says: beside the input (a gen run's own scores/ folder)."""
    path = Path(input_path)
    if path.is_dir() and is_run_dir(path):
        return path / "scores"
    return path.with_name((path.name if path.is_dir() else path.stem) + "-scores")


def score_samples(input_path: str, columns: Columns, image_root: str | None,
                  image_store: Path | None = None) -> list[dict]:
    """The samples of an input; images held in its rows are written to `image_store`."""
    path = Path(input_path)
    if path.is_dir() and is_run_dir(path):
        return run_samples(path)
    if path.is_dir() and is_layout(path):
        return layout_samples(path, image_root)
    return file_samples(input_path, columns, image_root, image_store)
