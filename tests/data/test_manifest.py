"""The manifest's journals and shards as readers see them while a run is still writing."""

from data.manifest import GEN_SCHEMA, ManifestReader, ManifestWriter, read_manifest, recover


def _row(i: int, attempt: int = 1) -> dict:
    return {"key": f"k{i}", "index": i, "attempt": attempt, "status": "ok"}


def _killed(writer: ManifestWriter) -> None:
    """What a SIGKILL leaves of a writer: its journal as it was, no longer held by anyone."""
    writer._journal.close()


def test_readers_see_journaled_rows_before_any_shard(tmp_path):
    folder = tmp_path / "manifest"
    a, b = ManifestWriter(folder, GEN_SCHEMA, tag="worker0"), ManifestWriter(folder, GEN_SCHEMA, tag="worker1")
    for i in range(3):
        a.add(_row(i))
    b.add(_row(3))
    with open(b._journal_path, "a") as journal:
        journal.write('{"key": "k4", "att')  # a write cut short by a kill
    assert not list(folder.glob("*.parquet"))  # nothing in a shard yet
    assert sorted(r["key"] for r in ManifestReader(folder).rows()) == ["k0", "k1", "k2", "k3"]
    assert sorted(read_manifest(folder)["key"].to_pylist()) == ["k0", "k1", "k2", "k3"]
    assert read_manifest(folder, journals=False) is None


def test_recover_seals_journals_once_and_drops_rows_already_in_shards(tmp_path):
    folder = tmp_path / "manifest"
    writer = ManifestWriter(folder, GEN_SCHEMA, tag="worker0", shard_rows=2)
    for i in range(3):
        writer.add(_row(i))  # k0, k1 reach a shard; k2 stays in the journal
    _killed(writer)
    with open(writer._journal_path, "a") as journal:  # a kill between the shard's rename and the emptying
        journal.write('{"key": "k0", "attempt": 1, "status": "ok"}\n')
    assert recover(folder, GEN_SCHEMA) == 1  # k2 only: k0 attempt 1 is in a shard already
    keys = read_manifest(folder)["key"].to_pylist()
    assert sorted(keys) == ["k0", "k1", "k2"] and not list(folder.glob(".journal-*"))


def test_a_torn_shard_is_skipped_with_a_warning_and_set_aside(tmp_path, capsys):
    from data.manifest import write_rows

    folder = tmp_path / "manifest"
    write_rows(folder, GEN_SCHEMA, [_row(0), _row(1)])
    write_rows(folder, GEN_SCHEMA, [_row(2)])
    torn = sorted(folder.glob("*.parquet"))[-1]
    torn.write_bytes(torn.read_bytes()[:40])  # what a host crash can leave of an unsynced file
    keys = read_manifest(folder)["key"].to_pylist()
    assert len(keys) in (1, 2) and "skipping unreadable shard" in capsys.readouterr().err
    recover(folder, GEN_SCHEMA)  # the run's owner sets it aside: its samples are simply still to do
    capsys.readouterr()
    assert not torn.exists() and (folder / f".{torn.name}.torn").exists()
    assert sorted(read_manifest(folder)["key"].to_pylist()) == sorted(keys)
    assert "skipping" not in capsys.readouterr().err


def test_unicode_line_separators_stay_inside_their_row(tmp_path):
    """U+2028, U+2029 and U+0085 are line breaks to str.splitlines, and json.dumps leaves them raw in a
    string: a journal (and a JSONL input) must split on newlines only."""
    import json

    from data.sources import Columns, load_samples

    prompt = "first\u2028second\u0085third\u2029fourth"
    folder = tmp_path / "manifest"
    writer = ManifestWriter(folder, GEN_SCHEMA, tag="worker0")
    writer.add({**_row(0), "prompt": prompt})
    writer.add(_row(1))
    _killed(writer)
    assert [r["prompt"] for r in ManifestReader(folder).rows()] == [prompt, None]
    assert recover(folder, GEN_SCHEMA) == 2 and read_manifest(folder)["prompt"].to_pylist()[0] == prompt
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"id": "a", "prompt": prompt}, ensure_ascii=False) + "\n", encoding="utf-8")
    assert [s["prompt"] for s in load_samples(src, Columns())] == [prompt]


def test_a_journaled_row_reaches_the_disk_within_a_second_even_when_no_other_comes(tmp_path, monkeypatch):
    """Durability against a host crash cannot be caused for real here: the test watches os.fsync."""
    import os
    import time

    synced: list[int] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real(fd))[1])
    writer = ManifestWriter(tmp_path / "manifest", GEN_SCHEMA, tag="worker0")
    writer.add(_row(0))  # then the worker goes idle
    fd = writer._journal.fileno()
    deadline = time.monotonic() + 3
    while fd not in synced and time.monotonic() < deadline:
        time.sleep(0.05)
    assert fd in synced and time.monotonic() < deadline
    writer.close()


def test_writes_do_not_follow_links_planted_in_a_shared_folder(tmp_path):
    from data.manifest import open_new
    from data.rundir import RunDir, RunDirError

    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    run = tmp_path / "run"
    run.mkdir()
    tmp = run / ".image.png.tmp"
    tmp.symlink_to(victim)
    with open_new(tmp) as handle:
        handle.write(b"pixels")
    assert victim.read_text() == "keep me" and tmp.read_bytes() == b"pixels" and not tmp.is_symlink()
    (run / ".lock").symlink_to(victim)
    import pytest

    with pytest.raises(RunDirError, match="is a symbolic link"):
        RunDir(run).lock()
    assert victim.read_text() == "keep me"


def test_a_follower_reads_each_shard_once_and_recovery_reads_the_shards_once(tmp_path, monkeypatch):
    """Polling a 100k-row run with nothing new, and sealing 20 journals, must not re-read every row each time."""
    import data.manifest as manifest
    from data.manifest import write_rows

    folder = tmp_path / "manifest"
    for shard in range(10):
        write_rows(folder, GEN_SCHEMA, [_row(shard * 100 + i) for i in range(100)])
    reads = []
    real = manifest._read_shard
    monkeypatch.setattr(manifest, "_read_shard", lambda path: (reads.append(path.name), real(path))[1])
    reader = ManifestReader(folder)
    assert len(reader.new_rows()) == 1000 and len(reads) == 10
    writer = ManifestWriter(folder, GEN_SCHEMA, tag="worker0")
    writer.add(_row(5000))
    assert [r["key"] for r in reader.new_rows()] == ["k5000"] and len(reads) == 10  # the journal's new row only
    assert reader.new_rows() == [] and len(reads) == 10
    writer.close()  # the journal becomes a shard: read once, its row already returned
    assert reader.new_rows() == [] and len(reads) == 11
    reads.clear()
    for w in range(20):
        killed = ManifestWriter(folder, GEN_SCHEMA, tag=f"killed{w}")
        killed.add(_row(6000 + w))
        _killed(killed)
    assert recover(folder, GEN_SCHEMA) == 20
    assert len(reads) == 11  # each shard once, not once per journal


def test_recovery_leaves_alone_a_journal_whose_writer_still_lives(tmp_path):
    """A driver sealing journals while an actor (another process, perhaps another host) still writes one
    would move rows from under it: a live writer holds an flock on its journal, and recovery skips it."""
    import subprocess
    import sys

    from helpers import ROOT

    folder = tmp_path / "manifest"
    code = ("import sys, time; from data.manifest import GEN_SCHEMA, ManifestWriter; "
            f"w = ManifestWriter({str(folder)!r}, GEN_SCHEMA, tag='actor'); "
            "w.add({'key': 'k0', 'index': 0, 'attempt': 1, 'status': 'ok'}); print('up', flush=True); "
            "sys.stdin.readline(); w.add({'key': 'k1', 'index': 1, 'attempt': 1, 'status': 'ok'}); w.close()")
    actor = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True)
    assert actor.stdout.readline().strip() == "up"
    assert recover(folder, GEN_SCHEMA) == 0 and list(folder.glob(".journal-*-actor.jsonl"))
    actor.communicate("go\n", timeout=60)  # it writes on into its journal, then seals it itself
    assert actor.returncode == 0
    assert sorted(read_manifest(folder)["key"].to_pylist()) == ["k0", "k1"] and not list(folder.glob(".journal-*"))
