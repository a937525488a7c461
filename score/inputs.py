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
from pathlib import Path

from data.manifest import latest_records, read_manifest
from data.sources import Columns, InputError, load_samples, safe_name

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
    rows = sorted((r for r in latest_records(table).values() if r["status"] == "ok"), key=lambda r: r["index"])
    fields = ("index", "sample_id", "key", "prompt", "category", "extra", "source_image", "task")
    return [{**{f: r[f] for f in fields}, "image_path": str((run / r["image_path"]).resolve())} for r in rows]


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
