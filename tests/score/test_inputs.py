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
