"""Input sources: turn a CSV / JSONL / Parquet file, a `datasets` dataset or an image folder into
samples, the rows every stage consumes.

A sample is a dict with `index` (position in the input: the seed comes from it), `sample_id`,
`key` (a filesystem-safe, unique form of the id), `prompt`, `source_image`, `image_path`,
`category` and `extra` (the other columns, JSON). Relative image paths resolve against the
input file's folder and must stay inside it (or inside `image_root` when given).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
PROMPT_COLUMNS = ("prompt", "instruction", "text", "caption", "edit_instruction")
IMAGE_COLUMNS = ("source_image", "input_image", "image", "image_path", "path", "file_name")
CATEGORY_COLUMNS = ("category", "task_type", "type")
ID_COLUMNS = ("sample_id", "id", "image_id", "key", "uid")


class InputError(ValueError):
    """Input that cannot be read at all: reported as a clear message, before any work starts."""


@dataclass
class Columns:
    id: str | None = None
    prompt: str | None = None
    image: str | None = None
    category: str | None = None
    generated_image: str | None = None  # for scoring: the image to judge (gen's `image_path`)


def safe_name(sample_id: str) -> str:
    """A filesystem-safe, collision-free file stem for a sample id."""
    clean = re.sub(r"[^A-Za-z0-9._-]+", "_", sample_id).strip("._")[:80] or "sample"
    if clean != sample_id:
        clean += "-" + hashlib.sha1(sample_id.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return clean


def read_records(path: str | Path) -> list[dict]:
    """Rows of a CSV / JSONL / JSON / Parquet file or a `datasets` dataset, as dicts."""
    p = Path(path)
    if p.is_dir():
        if (p / "dataset_info.json").exists() or (p / "dataset_dict.json").exists():
            return _read_saved_dataset(p)
        raise InputError(f"{p} is a folder; use an image folder source or a saved `datasets` dataset")
    if not p.exists():
        if re.fullmatch(r"[\w.-]+/[\w.-]+", str(path)):
            return _read_hub_dataset(str(path))
        raise InputError(f"input not found: {path}")
    suffix = p.suffix.lower()
    if suffix == ".csv":
        return _read_csv(p)
    if suffix in (".jsonl", ".ndjson"):
        return _read_jsonl(p)
    if suffix == ".json":
        data = json.loads(p.read_text(encoding="utf-8"))
        if not isinstance(data, list):
            raise InputError(f"{p}: a .json input must hold a list of objects")
        return data
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(p).to_pylist()
    raise InputError(f"{p}: unsupported input format {suffix!r} (use .csv, .jsonl, .json, .parquet or a dataset)")


def _read_csv(p: Path) -> list[dict]:
    import pandas as pd

    try:
        frame = pd.read_csv(p, dtype=str, keep_default_na=False, encoding="utf-8", encoding_errors="replace")
    except pd.errors.ParserError as exc:
        raise InputError(f"{p}: malformed CSV: {exc}") from exc
    return frame.to_dict("records")


def _read_jsonl(p: Path) -> list[dict]:
    rows = []
    # split on newlines only: str.splitlines would also cut at U+2028 / U+0085 inside a JSON string
    for n, line in enumerate(p.read_text(encoding="utf-8", errors="replace").split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{p}:{n}: malformed JSON line: {exc}") from exc
        if not isinstance(row, dict):
            raise InputError(f"{p}:{n}: each line must be a JSON object")
        rows.append(row)
    return rows


def _read_saved_dataset(p: Path) -> list[dict]:
    import datasets

    ds = datasets.load_from_disk(str(p))
    if isinstance(ds, datasets.DatasetDict):
        ds = ds[next(iter(ds))]
    return _dataset_records(ds)


def _read_hub_dataset(name: str) -> list[dict]:
    import datasets

    try:
        ds = datasets.load_dataset(name, split="train")
    except Exception as exc:  # the hub may be unreachable: say so plainly
        raise InputError(f"could not load dataset {name!r}: {exc}") from exc
    return _dataset_records(ds)


def _dataset_records(ds) -> list[dict]:
    """Rows with `Image()` columns left undecoded ({"bytes", "path"}): stored as files, not re-encoded."""
    import datasets

    for name, feature in ds.features.items():
        if isinstance(feature, datasets.Image):
            ds = ds.cast_column(name, datasets.Image(decode=False))
    return list(ds)


def read_image_folder(folder: Path) -> list[dict]:
    """An image folder, with an optional `instructions.jsonl`/`.csv` (column `file_name`) beside."""
    for name in ("instructions.jsonl", "instructions.csv", "metadata.jsonl", "metadata.csv"):
        if (folder / name).exists():
            return read_records(folder / name)
    files = sorted(f for f in folder.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
    return [{"sample_id": str(f.relative_to(folder).with_suffix("")), "file_name": str(f.relative_to(folder))}
            for f in files]


def _pick(record: dict, explicit: str | None, candidates: tuple[str, ...], what: str) -> str | None:
    if explicit:
        if explicit not in record:
            raise InputError(f"column {explicit!r} ({what}) not in the input; columns: {', '.join(record)}")
        return explicit
    return next((c for c in candidates if c in record), None)


def resolve_path(value: Any, base: Path, root: Path | None, store: Path | None = None) -> str | None:
    """An input's image as an absolute path: a path (refused if it leaves its folder), or an image
    held in the row itself (PIL image, encoded bytes, a `datasets` {"bytes", "path"} dict), which
    is written once to `store` under its content hash."""
    if value is None or value == "":
        return None
    if isinstance(value, dict) and value.get("bytes") is None and value.get("path"):
        value = value["path"]  # a `datasets` Image that points to a file
    if isinstance(value, (bytes, bytearray, dict)) or hasattr(value, "save"):
        return str(store_image(value, store or base / ".genscore-inputs"))
    if "\0" in str(value):
        raise InputError(f"image path {value!r} contains a NUL byte")
    path = Path(str(value))
    full = (base / path).resolve() if not path.is_absolute() else path.resolve()
    allowed = (root or base).resolve()
    # Relative paths stay under the input's folder (or --image-root); absolute ones are the
    # user's own choice, unless an --image-root was given, which then bounds them too.
    if (root is not None or not path.is_absolute()) and not full.is_relative_to(allowed):
        raise InputError(f"image path {value!r} leaves {allowed}")
    return str(full)


def store_image(value: Any, store: Path) -> Path:
    """An image held in a row, saved as `store/<sha1 of its bytes>.<format>` (once: reruns find it)."""
    import io
    import os

    from PIL import Image, UnidentifiedImageError

    if hasattr(value, "save"):  # a decoded PIL image: PNG keeps its pixels
        buffer = io.BytesIO()
        value.save(buffer, format="PNG")
        data = buffer.getvalue()
    else:
        data = bytes(value["bytes"] if isinstance(value, dict) else value)
        if not data:
            raise InputError("an image column holds an empty image")
    try:
        with Image.open(io.BytesIO(data)) as image:
            suffix = "." + (image.format or "png").lower()
    except UnidentifiedImageError:
        raise InputError("an image column holds bytes that are not an image") from None
    path = store / f"{hashlib.sha1(data).hexdigest()[:20]}{suffix}"
    if not path.exists():
        store.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    return path


def load_samples(path: str | Path, columns: Columns, num_samples: int | None = None, offset: int = 0,
                 image_root: str | None = None, image_store: Path | None = None) -> list[dict]:
    """Samples of an input, in input order, `offset`/`num_samples` applied after indexing. Images held
    in the rows (datasets `Image()` columns, bytes) are written to `image_store`."""
    p = Path(path)
    is_image_folder = p.is_dir() and not ((p / "dataset_info.json").exists() or (p / "dataset_dict.json").exists())
    records = read_image_folder(p) if is_image_folder else read_records(p)
    base = p if p.is_dir() else p.parent
    root = Path(image_root) if image_root else None
    if not records:
        raise InputError(f"{path}: no rows")
    names = _column_names(records[0], columns)
    samples = [_sample(i, r, names, base, root, image_store) for i, r in enumerate(records)]
    check_unique(samples, path)
    end = None if num_samples is None else offset + num_samples
    return samples[offset:end]


def _column_names(first: dict, columns: Columns) -> dict[str, str | None]:
    if columns.id and "," in columns.id:  # several columns make the id together, e.g. key,instruction_language
        for part in columns.id.split(","):
            _pick(first, part, (), "--id-column")
    names = {
        "id": columns.id if columns.id and "," in columns.id else _pick(first, columns.id, ID_COLUMNS, "--id-column"),
        "prompt": _pick(first, columns.prompt, PROMPT_COLUMNS, "--prompt-column"),
        "image": _pick(first, columns.image, IMAGE_COLUMNS, "--image-column"),
        "category": _pick(first, columns.category, CATEGORY_COLUMNS, "--category-column"),
        "generated": _pick(first, columns.generated_image, ("image_path", "edited_image", "output_image"),
                           "generated image column"),
    }
    if names["generated"] == names["image"]:
        names["generated"] = None
    return names


def _sample(index: int, record: dict, names: dict[str, str | None], base: Path, root: Path | None,
            store: Path | None) -> dict:
    def get(role: str) -> Any:
        if names[role] and "," in names[role]:
            return "_".join(str(record.get(part)) for part in names[role].split(","))
        return record.get(names[role]) if names[role] else None

    sample_id = str(get("id")) if get("id") not in (None, "") else f"{index:06d}"
    used = {n for n in names.values() if n and "," not in n}  # a composite id's parts stay in `extra`
    extra = {k: v for k, v in record.items() if k not in used and _is_plain(v)}
    prompt = get("prompt")
    category = get("category")
    return {
        "index": index,
        "sample_id": sample_id,
        "key": safe_name(sample_id),
        "prompt": None if prompt is None else str(prompt),
        "source_image": resolve_path(get("image"), base, root, store),
        "image_path": resolve_path(get("generated"), base, root, store),
        "category": None if category in (None, "") else str(category),
        "extra": json.dumps(extra, ensure_ascii=False, default=str) if extra else None,
    }


def _is_plain(value: Any) -> bool:
    """A value worth keeping in `extra` (JSON): not an image held in the row."""
    if isinstance(value, dict) and "bytes" in value:
        return False
    return value is None or isinstance(value, (str, int, float, bool, list, dict))


def ids_from_index(samples: list[dict]) -> bool:
    """Whether the ids are the rows' positions (the input has no id column)."""
    return bool(samples) and all(s["sample_id"] == f"{s['index']:06d}" for s in samples)


INDEX_IDS_NOTE = ("sample ids are the rows' positions (no id column found): a row inserted or removed shifts every "
                  "later id, and a resume then refuses the rows that changed; pass --id-column to key samples by "
                  "one of the input's columns")


def check_unique(samples: list[dict], path: str | Path) -> None:
    """Every sample's key (its id made filesystem-safe) is its own: two rows with one key would share an
    image file and a resume key."""
    seen: dict[str, dict] = {}
    for s in samples:
        first = seen.setdefault(s["key"], s)
        if first is not s:
            same = first["sample_id"] == s["sample_id"]
            ids = (f"id {s['sample_id']!r}" if same else
                   f"ids {first['sample_id']!r} and {s['sample_id']!r}, which both become the file name {s['key']!r},")
            raise InputError(f"{path}: duplicate sample {ids} in rows {first['index']} and {s['index']}; sample ids "
                             "must be unique: fix the input or choose another --id-column")


def only_categories(samples: list[dict], categories: str | None) -> list[dict]:
    """The samples of the named categories (comma-separated), in input order; an unknown name is an error."""
    if not categories:
        return samples
    wanted = [c.strip() for c in categories.split(",") if c.strip()]
    present = {s["category"] for s in samples}
    unknown = [c for c in wanted if c not in present]
    if unknown:
        raise InputError(f"--categories: {', '.join(unknown)} not in the input; its categories: "
                         f"{', '.join(sorted(str(c) for c in present))}")
    return [s for s in samples if s["category"] in wanted]
