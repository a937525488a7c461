"""Run folder locks on file systems that do not share them."""

import errno
import fcntl

import pytest

from data.rundir import RunDir, RunDirError, local_lock_warning

MOUNTS = """\
/dev/sda1 / ext4 rw,relatime 0 0
server:/export /shared nfs4 rw,relatime,vers=4.2,local_lock=none 0 0
server:/old /old nfs rw,nolock,vers=3 0 0
mds@tcp:/lfs /lustre lustre rw,localflock 0 0
mds@tcp:/lfs2 /lustre2 lustre rw,flock 0 0
"""


def test_locks_local_to_one_host_are_named():
    assert local_lock_warning("/old/runs/a", MOUNTS).startswith("/old/runs/a is on nfs mounted with rw,nolock")
    assert "lustre" in local_lock_warning("/lustre/runs/a", MOUNTS)
    for shared in ("/shared/runs/a", "/lustre2/runs/a", "/home/me/runs/a"):
        assert local_lock_warning(shared, MOUNTS) is None


def test_a_file_system_without_flock_is_a_clear_error(tmp_path, monkeypatch):
    def no_locks(handle, operation):  # what NFS without a lock manager answers
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.raises(RunDirError, match="does not support file locks .*No locks available"):
        RunDir(tmp_path / "run").lock()
