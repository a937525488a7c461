"""The manifest: one Parquet schema for every row genscore writes, and its crash-safe IO.

A manifest is a folder of Parquet shards that `pandas.read_parquet(folder)` reads together.
Rows reach disk in two steps:
1. each finished row is appended to a journal (`.journal-<run>.jsonl`, one JSON line per row),
   so a killed run loses only the samples in flight, never a finished one;
2. every few hundred rows (and at the end) the journal becomes a shard, written under a hidden
   temporary name and renamed when complete, then the journal is emptied.
A journal left by a killed run is turned into a shard when the next run opens the folder; rows
already in a shard are dropped by their (key, attempt), so a crash between the rename and the
emptying never duplicates a row. Hidden files (`.name`) are ignored by pyarrow's readers.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

# Columns every row has: what the sample is, how it ended, where and when it ran.
_COMMON = [
    ("key", pa.string()),            # unique per sample within a run: the resume key
    ("sample_id", pa.string()),
    ("index", pa.int64()),           # position in the input; seed = seed_start + index
    ("task", pa.string()),
    ("category", pa.string()),
    ("prompt", pa.string()),         # prompt (t2i) or instruction (edit)
    ("source_image", pa.string()),
    ("image_path", pa.string()),     # generated image (gen) / judged image (score)
    ("extra", pa.string()),          # the input's other columns, as JSON
    ("status", pa.string()),         # "ok" | "failed"
    ("error", pa.string()),
    ("attempt", pa.int32()),
    ("device", pa.string()),
    ("worker", pa.int32()),
    ("started_at", pa.float64()),    # unix seconds
    ("duration_s", pa.float64()),
]

_GEN = [
    ("model", pa.string()),
    ("seed", pa.int64()),
    ("steps", pa.int32()),
    ("guidance_scale", pa.float64()),
    ("true_cfg_scale", pa.float64()),
    ("negative_prompt", pa.string()),
    ("height", pa.int32()),
    ("width", pa.int32()),
    ("dtype", pa.string()),
]

_SCORE = [
    ("judge_model", pa.string()),
    ("template", pa.string()),
    ("template_version", pa.string()),
    ("semantics", pa.float64()),     # SC (edit) / prompt alignment (t2i)
    ("quality", pa.float64()),       # PQ
    ("overall", pa.float64()),
    ("sub_scores", pa.string()),     # every numeric field of the answers, as JSON
    ("caption", pa.string()),
    ("reasoning", pa.string()),
    ("raw_response", pa.string()),   # the judge's raw text, one JSON answer per question
    ("prompt_tokens", pa.int64()),
    ("output_tokens", pa.int64()),
    ("asks", pa.int32()),            # times the questions were asked (protocols re-ask unparseable answers)
]

GEN_SCHEMA = pa.schema(_COMMON + _GEN)
SCORE_SCHEMA = pa.schema(_COMMON + _SCORE)


def empty_row(schema: pa.Schema) -> dict:
    return {name: None for name in schema.names}


def read_manifest(folder: Path | str) -> pa.Table | None:
    """Every row of every complete shard in `folder`, or None if there are none."""
    files = sorted(Path(folder).glob("*.parquet")) if Path(folder).is_dir() else []
    if not files:
        return None
    return pa.concat_tables([pq.read_table(f) for f in files], promote_options="permissive")


def latest_records(table: pa.Table) -> dict[str, dict]:
    """key -> the row of each key's latest attempt (plain Python values, None for nulls)."""
    out: dict[str, dict] = {}
    for row in table.to_pylist():
        if row["key"] not in out or row["attempt"] >= out[row["key"]]["attempt"]:
            out[row["key"]] = row
    return out


def latest_status(folder: Path | str) -> dict[str, tuple[str, int]]:
    """key -> (status, attempt) of each key's latest attempt."""
    table = read_manifest(folder)
    if table is None:
        return {}
    latest = latest_records(table.select(["key", "status", "attempt"]))
    return {key: (row["status"], row["attempt"]) for key, row in latest.items()}


def latest_rows(frame):
    """A pandas frame of rows reduced to each key's latest attempt: the run's final outcome."""
    return frame.sort_values(["key", "attempt"]).drop_duplicates("key", keep="last").reset_index(drop=True)


class ManifestWriter:
    """Appends rows to a journal and turns the journal into atomically renamed shards."""

    def __init__(self, folder: Path | str, schema: pa.Schema, shard_rows: int = 512):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.schema = schema
        self.shard_rows = shard_rows
        self.run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
        self._seq = 0
        self._rows: list[dict] = []
        self.recover()
        self._journal_path = self.folder / f".journal-{self.run_id}.jsonl"
        self._journal = open(self._journal_path, "a", encoding="utf-8")

    def recover(self) -> int:
        """Turn journals and temporary shards left by killed runs into shards (or drop them)."""
        for tmp in self.folder.glob(".*.parquet.tmp"):
            tmp.unlink()
        recovered = 0
        for journal in sorted(self.folder.glob(".journal-*.jsonl")):
            rows = _read_journal(journal)
            done = _row_ids(read_manifest(self.folder))
            rows = [r for r in rows if (r["key"], r["attempt"]) not in done]
            if rows:
                self._write_shard(rows, tag="recovered")
                recovered += len(rows)
            journal.unlink()
        return recovered

    def add(self, row: dict) -> None:
        row = {name: row.get(name) for name in self.schema.names}
        # One write per line: a kill leaves at most one partial last line, which recovery skips.
        self._journal.write(json.dumps(row, ensure_ascii=False, allow_nan=True) + "\n")
        self._journal.flush()
        self._rows.append(row)
        if len(self._rows) >= self.shard_rows:
            self.flush()

    def flush(self) -> None:
        if not self._rows:
            return
        self._write_shard(self._rows, tag=self.run_id)
        self._rows = []
        self._journal.truncate(0)
        self._journal.seek(0)

    def close(self) -> None:
        self.flush()
        self._journal.close()
        self._journal_path.unlink(missing_ok=True)

    def _write_shard(self, rows: list[dict], tag: str) -> Path:
        self._seq += 1
        name = f"part-{tag}-{self._seq:05d}-{uuid.uuid4().hex[:6]}.parquet"
        tmp = self.folder / f".{name}.tmp"
        pq.write_table(pa.Table.from_pylist(rows, schema=self.schema), tmp)
        os.replace(tmp, self.folder / name)
        return self.folder / name


def _read_journal(path: Path) -> list[dict]:
    rows = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # the partial last line of a killed write
    return rows


def _row_ids(table: pa.Table | None) -> set[tuple[str, int]]:
    if table is None:
        return set()
    cols = table.select(["key", "attempt"]).to_pydict()
    return set(zip(cols["key"], cols["attempt"]))


def write_rows(folder: Path | str, schema: pa.Schema, rows: Iterable[dict]) -> None:
    """Write rows as one shard, through the same journal-and-rename path as a run."""
    writer = ManifestWriter(folder, schema)
    for row in rows:
        writer.add(row)
    writer.close()
