"""The manifest: one Parquet schema for every row genscore writes, and its crash-safe IO.

A manifest is a folder of Parquet shards that `pandas.read_parquet(folder)` reads together.
Each worker writes its own rows, in two steps:
1. each finished row is appended to the worker's journal (`.journal-<run>-<worker>.jsonl`, one
   JSON line per row), so a killed worker loses only the samples in flight, never a finished one;
2. every few hundred rows (and when the worker ends) its journal becomes a shard, written under a
   hidden temporary name and renamed when complete, then the journal is emptied.
Journals left by killed workers are turned into shards by `recover`, which the run's owner calls
before its workers start and after they end; rows already in a shard are dropped by their
(key, attempt), so a crash between the rename and the emptying never duplicates a row. Hidden
files (`.name`) are ignored by pyarrow's readers; `ManifestReader` also reads the journals, so a
run that follows another sees its rows as they land.
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
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
    # one image's time by phase, from the host clock at the pipeline's step callbacks (a batch's share each):
    # text/image encoding before the first step, the denoising steps, VAE decoding after the last, the file
    ("encode_s", pa.float64()),
    ("denoise_s", pa.float64()),
    ("decode_s", pa.float64()),
    ("save_s", pa.float64()),
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
    ("decoding", pa.string()),       # "free" (read by the protocol's parser) | "schema" (grammar-forced JSON)
    ("max_pixels", pa.int64()),      # the most pixels an image kept on its way to the judge
    ("upstream_guess", pa.bool_()),  # a failed row where the protocol's reference would have invented a score
]

GEN_SCHEMA = pa.schema(_COMMON + _GEN)
SCORE_SCHEMA = pa.schema(_COMMON + _SCORE)


def empty_row(schema: pa.Schema) -> dict:
    return {name: None for name in schema.names}


def read_manifest(folder: Path | str, journals: bool = True) -> pa.Table | None:
    """Every row of every complete shard in `folder` and, with `journals`, the rows a running (or
    killed) run has only journaled so far; None if there are none."""
    folder = Path(folder)
    files = sorted(folder.glob("*.parquet")) if folder.is_dir() else []
    tables = [t for t in map(_read_shard, files) if t is not None]
    if journals and folder.is_dir():
        rows = ManifestReader(folder).journal_rows(_row_ids(pa.concat_tables(tables) if tables else None))
        if rows:
            tables.append(pa.Table.from_pylist(rows, schema=SCORE_SCHEMA if "judge_model" in rows[0] else GEN_SCHEMA))
    if not tables:
        return None
    return pa.concat_tables(tables, promote_options="permissive")


def latest_records(table: pa.Table) -> dict[str, dict]:
    """key -> the row of each key's latest attempt (plain Python values, None for nulls)."""
    return latest_of(table.to_pylist())


def latest_of(rows: Iterable[dict]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for row in rows:
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


SYNC_EVERY_S = 1.0  # a journaled row reaches the disk within this: a host crash costs at most that


def _read_shard(path: Path) -> pa.Table | None:
    """A shard, or None with a warning if it is torn (a host crash before its data reached the
    disk): its samples have no row then, and the next run redoes them. The folder stays readable."""
    try:
        return pq.read_table(path)
    except FileNotFoundError:
        return None
    except (pa.ArrowException, OSError) as exc:
        print(f"warning: skipping unreadable shard {path} ({exc}); its samples will be redone", file=sys.stderr)
        return None


def open_new(path: Path, mode: str = "wb"):
    """A file created anew for writing: an existing file, or a symbolic link planted under that name in a
    shared folder, is removed first (the link, never what it points to), and the create is exclusive, so
    our writes never follow a link elsewhere."""
    path.unlink(missing_ok=True)
    return open(path, mode.replace("w", "x"), encoding=None if "b" in mode else "utf-8")


def fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable (the new name itself lives in the directory)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ManifestWriter:
    """One worker's rows: appended to its journal, turned into atomically renamed shards."""

    def __init__(self, folder: Path | str, schema: pa.Schema, tag: str = "main", shard_rows: int = 512):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.schema = schema
        self.shard_rows = shard_rows
        self.tag = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}-{tag}"
        self._seq = 0
        self._rows: list[dict] = []
        self._journal_path = self.folder / f".journal-{self.tag}.jsonl"
        self._journal = open_new(self._journal_path, "w")
        _hold(self._journal)  # while we write it, no recovery (a driver on another host) seals it under us
        self._lock = threading.Lock()  # the sync timer's thread and ours
        self._sync: threading.Timer | None = None

    def add(self, row: dict) -> None:
        row = {name: row.get(name) for name in self.schema.names}
        with self._lock:
            # One write per line: a kill leaves at most one partial last line, which recovery skips.
            self._journal.write(json.dumps(row, ensure_ascii=False, allow_nan=True) + "\n")
            self._journal.flush()  # a killed process loses nothing from here on; a host crash needs the fsync
            if self._sync is None:  # on disk within SYNC_EVERY_S, whether or not another row comes
                self._sync = threading.Timer(SYNC_EVERY_S, self._fsync)
                self._sync.daemon = True
                self._sync.start()
        self._rows.append(row)
        if len(self._rows) >= self.shard_rows:
            self.flush()

    def _fsync(self) -> None:
        with self._lock:
            self._sync = None
            if not self._journal.closed:
                os.fsync(self._journal.fileno())

    def flush(self) -> None:
        if not self._rows:
            return
        self._seq += 1
        _write_shard(self.folder, self.schema, self._rows, f"{self.tag}-{self._seq:05d}")
        self._rows = []
        with self._lock:
            self._journal.truncate(0)
            self._journal.seek(0)

    def close(self) -> None:
        self.flush()
        with self._lock:
            if self._sync is not None:
                self._sync.cancel()
            self._journal.close()
        self._journal_path.unlink(missing_ok=True)


def recover(folder: Path | str, schema: pa.Schema) -> int:
    """Turn journals and temporary shards left by killed workers into shards (or drop them).
    Only the run's owner calls this, while no worker of its runs: live journals would be taken."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    for tmp in folder.glob(".*.parquet.tmp"):
        tmp.unlink()
    done: set[tuple[str, int]] = set()  # every shard read once, not once per journal
    for shard in folder.glob("*.parquet"):
        table = _read_shard(shard)
        if table is None:  # torn: set aside, so that readers stop tripping on it
            shard.rename(folder / f".{shard.name}.torn")
        else:
            done |= _row_ids(table)
    recovered = 0
    for journal in sorted(folder.glob(".journal-*.jsonl")):
        with open(journal, "rb") as handle:
            if not _hold(handle):  # its writer lives (a Ray actor still finishing): it seals its own journal
                print(f"warning: {journal.name} is still being written; its rows stay there", file=sys.stderr)
                continue
            rows = [r for r in _read_journal(journal) if (r["key"], r["attempt"]) not in done]
            if rows:
                _write_shard(folder, schema, rows, f"recovered-{journal.stem.removeprefix('.journal-')}")
                done.update((r["key"], r["attempt"]) for r in rows)
                recovered += len(rows)
            journal.unlink()
    return recovered


def _hold(handle) -> bool:
    """An exclusive flock on an open file, without waiting; False if another process holds one. File
    systems without flock count as held by nobody."""
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:  # ENOLCK, EOPNOTSUPP
        pass
    return True


def _write_shard(folder: Path, schema: pa.Schema, rows: list[dict], name: str) -> Path:
    path = folder / f"part-{name}-{uuid.uuid4().hex[:6]}.parquet"
    tmp = folder / f".{path.name}.tmp"
    with open_new(tmp) as handle:
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), handle)
        handle.flush()
        os.fsync(handle.fileno())  # the data before the name: a host crash leaves no torn shard
    os.replace(tmp, path)
    fsync_dir(folder)
    return path


class ManifestReader:
    """The rows of a manifest that may still be growing: every shard (read once: a shard never
    changes) and every journal (read each time, a partial last line skipped; a journal holds at most
    one shard's rows, so that stays cheap however large the run)."""

    def __init__(self, folder: Path | str):
        self.folder = Path(folder)
        self._shards: dict[str, list[dict]] = {}
        self._returned: set[tuple[str, int]] = set()  # for new_rows
        self._new_shards: set[str] = set()

    def new_rows(self) -> list[dict]:
        """Rows not returned by an earlier call: new shards' rows and journaled rows not seen before. A
        follower polls this: each poll costs the new rows and the journals, not the whole run."""
        rows = []
        for name, shard in self._unread_shards(self._new_shards):
            self._new_shards.add(name)
            rows += shard
        rows += self.journal_rows(self._returned)
        fresh = {(r["key"], r["attempt"]): r for r in rows if (r["key"], r["attempt"]) not in self._returned}
        self._returned.update(fresh)
        return list(fresh.values())

    def _unread_shards(self, read) -> Iterator[tuple[str, list[dict]]]:
        """(name, rows) of each shard whose name is not in `read` (a torn one has none)."""
        for path in sorted(self.folder.glob("*.parquet")):
            if path.name not in read:
                table = _read_shard(path)
                yield path.name, table.to_pylist() if table is not None else []

    def rows(self) -> list[dict]:
        for name, shard in self._unread_shards(self._shards):
            self._shards[name] = shard
        rows = [row for shard in self._shards.values() for row in shard]
        return rows + self.journal_rows({(row["key"], row["attempt"]) for row in rows})

    def journal_rows(self, in_shards: set[tuple[str, int]]) -> list[dict]:
        """Journaled rows that are not in a shard yet."""
        rows = []
        for journal in sorted(self.folder.glob(".journal-*.jsonl")):
            try:
                found = _read_journal(journal)
            except FileNotFoundError:
                continue  # its writer just turned it into a shard: the next read has those rows
            rows += [row for row in found if (row["key"], row["attempt"]) not in in_shards]
        return rows


def _read_journal(path: Path) -> list[dict]:
    rows = []
    # newlines only: str.splitlines would also cut at U+2028 / U+0085, which json.dumps leaves in a string
    for line in path.read_text(encoding="utf-8", errors="replace").split("\n"):
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
    recover(folder, schema)
    writer = ManifestWriter(folder, schema)
    for row in rows:
        writer.add(row)
    writer.close()
