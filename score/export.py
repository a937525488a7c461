"""Take a run away in the forms training and sharing tools read.

- `export_dataset`: a `datasets` dataset (`save_to_disk`), one row per sample: the score row joined
  with the generation row (`gen_` columns), the judged image and the source image as `Image()`
  columns holding their bytes, so the folder stands alone. `push_to_hub` uploads it.
- `export_imagefolder`: a caption run as diffusers' and kohya's training scripts read it: the
  images and a `metadata.jsonl` of `{"file_name", "text"}`, loadable as `load_dataset("imagefolder")`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd

GEN_COLUMNS = ("model", "seed", "steps", "guidance_scale", "true_cfg_scale", "negative_prompt", "height", "width",
               "dtype", "status", "error", "device", "duration_s")


def sample_table(run: Path, gen: pd.DataFrame, scores: pd.DataFrame) -> pd.DataFrame:
    """One row per sample: the score row (or the gen row of an unscored run) with gen's columns as
    `gen_*`, image paths made absolute."""
    if scores.empty:
        frame = gen.copy()
        frame["image_path"] = [str(run / p) if isinstance(p, str) else None for p in frame["image_path"]]
        return frame
    if gen.empty:
        return scores.copy()
    extra = gen[["key", *[c for c in GEN_COLUMNS if c in gen]]].rename(columns={c: f"gen_{c}" for c in GEN_COLUMNS})
    return scores.merge(extra, on="key", how="left")


def input_roots(run: Path) -> list[Path]:
    """The folders a run's images may come from: the run itself, and each of its stages' input folder and
    --image-root (run.json, score.json). A row naming a file anywhere else is not embedded."""
    roots = [run.resolve()]
    for name in ("run.json", "score.json"):
        path = run / name
        if not path.is_file():
            continue
        config = json.loads(path.read_text()).get("config", {})
        for value in (config.get("input"), config.get("image_root"), config.get("output_dir")):
            if isinstance(value, str) and value and Path(value).exists():
                folder = Path(value).resolve()
                roots.append(folder if folder.is_dir() else folder.parent)
    return roots


def _image(path, roots: list[Path]) -> dict | None:
    """An image's bytes for the dataset: only a file under the run or its inputs, and only an image (a row
    may name any path: a failed one might name a private key file)."""
    from PIL import Image, UnidentifiedImageError

    if not isinstance(path, str) or not Path(path).is_file():
        return None
    resolved = Path(path).resolve()
    if not any(resolved.is_relative_to(root) for root in roots):
        return None
    try:
        with Image.open(resolved) as image:
            image.verify()
    except (UnidentifiedImageError, OSError, SyntaxError):
        return None
    return {"bytes": resolved.read_bytes(), "path": resolved.name}


def export_dataset(run: Path, gen: pd.DataFrame, scores: pd.DataFrame, out: Path):
    """Write the dataset to `out` (save_to_disk) and return it."""
    import datasets

    frame = sample_table(run, gen, scores).sort_values("index").reset_index(drop=True)
    roots = input_roots(run)
    images = {"image": [_image(p, roots) for p in frame["image_path"]],
              "source": [_image(p, roots) for p in frame.get("source_image", pd.Series([None] * len(frame)))]}
    frame = frame.astype(object).where(frame.notna(), None)
    table = {c: frame[c].tolist() for c in frame.columns}
    features = datasets.Features({**{c: _feature(frame[c]) for c in frame.columns},
                                  "image": datasets.Image(), "source": datasets.Image()})
    dataset = datasets.Dataset.from_dict({**table, **images}, features=features)
    dataset.save_to_disk(str(out))
    return dataset


def _feature(column: pd.Series):
    import datasets

    values = [v for v in column if v is not None]
    if values and all(isinstance(v, bool) for v in values):
        return datasets.Value("bool")
    if values and all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return datasets.Value("int64")
    if values and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return datasets.Value("float64")
    return datasets.Value("string")


def export_imagefolder(scores: pd.DataFrame, out: Path) -> int:
    """Copy each captioned image beside a metadata.jsonl line; returns how many."""
    ok = scores[(scores["status"] == "ok") & scores["caption"].notna()].sort_values("index")
    if ok.empty:
        raise ValueError("--export-imagefolder needs a caption run with ok rows (score.run --task caption)")
    out.mkdir(parents=True, exist_ok=True)
    lines = []
    for row in ok.itertuples():
        name = f"{row.key}{Path(row.image_path).suffix.lower() or '.png'}"
        shutil.copyfile(row.image_path, out / name)
        lines.append(json.dumps({"file_name": name, "text": row.caption}, ensure_ascii=False))
    (out / "metadata.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return len(lines)
