"""Input sources as the field stores them: hub-style datasets with Image() columns, ids, categories."""

import io
from pathlib import Path

import datasets
import pytest
from PIL import Image

from data.sources import Columns, InputError, load_samples, only_categories


def _png(color, size=(40, 24)) -> Image.Image:
    return Image.new("RGB", size, color)


def test_image_columns_in_every_form_are_stored_once(tmp_path):
    encoded = io.BytesIO()
    _png((0, 200, 0)).save(encoded, format="JPEG")
    records = [{"image_id": "a", "instruction": "x", "image": _png((200, 0, 0)), "category": "物理"},
               {"image_id": "b", "instruction": "y", "image": {"bytes": encoded.getvalue(), "path": "b.jpg"},
                "category": "环境"},
               {"image_id": "c", "instruction": "z", "image": None, "category": "物理"}]
    folder = tmp_path / "ds"
    features = datasets.Features({"image_id": datasets.Value("string"), "instruction": datasets.Value("string"),
                                  "image": datasets.Image(), "category": datasets.Value("string")})
    datasets.Dataset.from_list(records, features=features).save_to_disk(str(folder))
    store = tmp_path / "run" / "inputs"
    samples = load_samples(folder, Columns(), image_store=store)
    assert [s["sample_id"] for s in samples] == ["a", "b", "c"]  # image_id is an id column
    a, b, c = samples
    assert Image.open(a["source_image"]).getpixel((0, 0)) == (200, 0, 0)
    assert b["source_image"].endswith(".jpeg") and open(b["source_image"], "rb").read() == encoded.getvalue()
    assert c["source_image"] is None  # an Image column holding None: the sample fails later, with its reason
    assert {Path(s["source_image"]).parent for s in (a, b)} == {store}
    again = load_samples(folder, Columns(), image_store=store)  # a rerun finds the same files
    assert [s["source_image"] for s in again] == [s["source_image"] for s in samples]
    assert sorted(p.name for p in store.iterdir()) == sorted(Path(s["source_image"]).name for s in (a, b))
    assert "image" not in (a["extra"] or "")  # image bytes never land in `extra`
    with pytest.raises(InputError, match="not an image"):
        load_samples(_saved(tmp_path / "bad", {"id": "x", "image": b"not a png"}), Columns(), image_store=store)


def _saved(folder, record: dict):
    datasets.Dataset.from_list([record]).save_to_disk(str(folder))
    return folder


def test_composite_ids_and_categories_in_the_inputs_language(tmp_path):
    folder = tmp_path / "ds"
    datasets.Dataset.from_list([
        {"key": "k1", "instruction_language": "en", "instruction": "a", "task_type": "物理"},
        {"key": "k1", "instruction_language": "cn", "instruction": "甲", "task_type": "物理"},
        {"key": "k2", "instruction_language": "en", "instruction": "b", "task_type": "因果"},
    ]).save_to_disk(str(folder))
    samples = load_samples(folder, Columns(id="key,instruction_language"))
    assert [s["sample_id"] for s in samples] == ["k1_en", "k1_cn", "k2_en"]
    assert '"key": "k1"' in samples[1]["extra"] and '"instruction_language": "cn"' in samples[1]["extra"]
    picked = only_categories(samples, "因果")
    assert [(s["sample_id"], s["index"]) for s in picked] == [("k2_en", 2)]  # the index (and seed) is kept
    with pytest.raises(InputError, match="社会 not in the input; its categories: 因果, 物理"):
        only_categories(samples, "物理,社会")
    with pytest.raises(InputError, match="duplicate sample id 'k1'"):
        load_samples(folder, Columns(id="key"))


def test_ids_that_become_one_key_are_refused_naming_both(tmp_path):
    from data.sources import check_unique

    samples = [{"sample_id": "a b", "key": "a_b", "index": 0}, {"sample_id": "a?b", "key": "a_b", "index": 3}]
    with pytest.raises(InputError, match=r"ids 'a b' and 'a\?b', which both become the file name 'a_b', in rows 0 and 3"):
        check_unique(samples, "in.jsonl")

