"""The manifest's journals and shards as readers see them while a run is still writing."""

from data.manifest import GEN_SCHEMA, ManifestReader, ManifestWriter, read_manifest, recover


def _row(i: int, attempt: int = 1) -> dict:
    return {"key": f"k{i}", "index": i, "attempt": attempt, "status": "ok"}


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
