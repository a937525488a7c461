"""Score inputs that only scoring reads: design layouts and gen runs."""

import pytest

from data.sources import InputError


def test_a_layout_with_one_element_twice_is_refused(tmp_path):
    import json

    from score.inputs import layout_samples

    (tmp_path / "jsons").mkdir()
    (tmp_path / "jsons" / "doc.json").write_text(json.dumps({"elements": [{"id": "logo", "type": "Svg"},
                                                                          {"id": "logo", "type": "Svg"}]}))
    with pytest.raises(InputError, match="duplicate sample id 'doc/logo' in rows 0 and 1"):
        layout_samples(tmp_path)


def test_a_follower_ignores_a_completion_marker_older_than_the_run_it_follows(tmp_path):
    import os
    import time

    from data.rundir import COMPLETE
    from score.inputs import FollowRun

    run = tmp_path / "run"
    (run / "manifest").mkdir(parents=True)
    (run / COMPLETE).write_text("{}")  # the earlier run's
    time.sleep(0.01)
    (run / "run.json").write_text("{}")  # a rerun has started and not yet cleared the marker
    follow = FollowRun(run, timeout_s=60)
    assert follow.poll() == ([], False)
    (run / COMPLETE).write_text("{}")  # the rerun's own marker
    os.utime(run / COMPLETE, (time.time() + 1, time.time() + 1))
    assert follow.poll() == ([], True)
