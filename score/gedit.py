"""GEdit-Bench's own file layout and statistics, from a scored edit run.

`export` writes what upstream `test_gedit_score.py` writes (stepfun-ai/Step1X-Edit, GEdit-Bench/):
- `DIR/<model>/<backbone>/eval_results_new/<model>_<group>_gpt_score.csv` for each of the 11
  groups and `<model>_combined_gpt_score.csv`, with exactly upstream's columns (and spelling);
  `<backbone>` is `gpt4o` or `qwen25vl`, the only two upstream `calculate_statistics.py` accepts;
- the images at `DIR/<model>/fullset/<group>/<lang>/<key>.png` and `<key>_SRCIMG.png`.
`statistics` computes what upstream `calculate_statistics.py` prints, per language: each group's
mean SC, PQ and O (O = sqrt(SC x PQ) per sample), their average over the 11 group means (a macro
mean), and the same over the samples whose `Intersection_exist` is true.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pandas as pd

GROUPS = ["background_change", "color_alter", "material_alter", "motion_change", "ps_human", "style_change",
          "subject-add", "subject-remove", "subject-replace", "text_change", "tone_transfer"]
COLUMNS = ["source_image", "edited_image", "instruction", "sementics_score", "quality_score", "intersection_exist",
           "instruction_language"]
LANGUAGES = ("en", "cn")


BACKBONES = ("gpt4o", "qwen25vl")  # upstream's --backbone choices ("gpt4o" runs GPT-4.1)


class GEditError(ValueError):
    pass


def truth(value) -> bool:
    """`Intersection_exist` as the dataset means it, from whatever carried it: a bool (the hub dataset),
    "True"/"False"/"1"/"0" (a CSV; `bool("False")` would be True), a number, or nothing (False)."""
    if isinstance(value, str):
        word = value.strip().lower()
        if word in ("true", "1", "1.0", "yes"):
            return True
        if word in ("false", "0", "0.0", "no", ""):
            return False
        raise GEditError(f"--gedit: Intersection_exist {value!r} is neither true nor false")
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    return bool(value)


def default_backbone(judge_model: str) -> str:
    """gpt4o for GPT judges, qwen25vl otherwise: the folder upstream's statistics script reads."""
    return "gpt4o" if "gpt" in str(judge_model).lower() else "qwen25vl"


def gedit_rows(scores: pd.DataFrame, ok_only: bool = True) -> pd.DataFrame:
    """The score rows (the ok ones by default) with GEdit-Bench's fields: group, key, language, intersection."""
    ok = scores[scores["status"] == "ok"] if ok_only else scores
    extra = ok["extra"].map(lambda e: json.loads(e) if isinstance(e, str) else {})
    rows = pd.DataFrame({
        "group": ok["category"], "key": [x.get("key", s) for x, s in zip(extra, ok["sample_id"])],
        "instruction_language": extra.map(lambda x: x.get("instruction_language")),
        "intersection_exist": extra.map(lambda x: truth(x.get("Intersection_exist"))),
        "instruction": ok["prompt"], "sementics_score": ok["semantics"], "quality_score": ok["quality"],
        "source": ok["source_image"], "edited": ok["image_path"], "status": ok["status"],
        "upstream_guess": ok["upstream_guess"].fillna(False).astype(bool) if "upstream_guess" in ok else False,
    })
    unknown = sorted(set(rows["group"].fillna("<none>")) - set(GROUPS))
    if unknown:
        raise GEditError(f"--gedit: categories {unknown} are not GEdit-Bench groups ({', '.join(GROUPS)})")
    missing = [g for g in GROUPS if g not in set(rows["group"])]
    if missing:
        raise GEditError(f"--gedit: no scored samples in the groups {missing}; GEdit-Bench averages all 11")
    languages = sorted(set(rows["instruction_language"].fillna("<none>")) - set(LANGUAGES))
    if languages:
        raise GEditError(f"--gedit: instruction_language must be en or cn, found {languages}")
    return rows


def export(scores: pd.DataFrame, out: Path, model: str, backbone: str) -> list[Path]:
    """Write upstream's CSVs and image folders; returns the CSV paths."""
    rows = gedit_rows(scores)
    bad = [k for k in rows["key"] if not _plain_name(str(k))]
    if bad:  # before anything is written
        raise GEditError(f"--gedit: key {bad[0]!r} is not a plain file name (GEdit-Bench's keys are); it would write "
                         f"outside {out}")
    base = out / model
    csv_dir = base / backbone / "eval_results_new"
    csv_dir.mkdir(parents=True, exist_ok=True)
    records = []
    for r in rows.itertuples():
        folder = base / "fullset" / r.group / r.instruction_language
        source, edited = folder / f"{r.key}_SRCIMG.png", folder / f"{r.key}.png"
        _save_png(r.source, source)
        _save_png(r.edited, edited)
        records.append({"group": r.group, "source_image": str(source), "edited_image": str(edited),
                        "instruction": r.instruction, "sementics_score": r.sementics_score,
                        "quality_score": r.quality_score, "intersection_exist": r.intersection_exist,
                        "instruction_language": r.instruction_language})
    table = pd.DataFrame(records)
    paths = []
    for group in GROUPS:
        paths.append(csv_dir / f"{model}_{group}_gpt_score.csv")
        table.loc[table["group"] == group, COLUMNS].to_csv(paths[-1], index=False)
    paths.append(csv_dir / f"{model}_combined_gpt_score.csv")
    table[COLUMNS].to_csv(paths[-1], index=False)
    return paths


def _plain_name(key: str) -> bool:
    return bool(key) and "/" not in key and "\\" not in key and key not in (".", "..") and "\0" not in key


def _save_png(src: str | None, dst: Path) -> None:
    from PIL import Image

    dst.parent.mkdir(parents=True, exist_ok=True)
    if src and src.lower().endswith(".png"):
        shutil.copyfile(src, dst)
        return
    with Image.open(src) as image:
        image.save(dst)


def statistics(scores: pd.DataFrame, language: str) -> dict[str, dict[str, tuple[float, float, float]]]:
    """{"all" | "intersection": {group | "Average": (SC, PQ, O)}} for one language, as upstream."""
    rows = gedit_rows(scores)
    rows = rows[rows["instruction_language"] == language]
    out: dict[str, dict] = {}
    for subset, frame in (("all", rows), ("intersection", rows[rows["intersection_exist"]])):
        groups = {}
        for group in GROUPS:
            g = frame[frame["group"] == group]
            sc, pq = g["sementics_score"].tolist(), g["quality_score"].tolist()
            groups[group] = (_mean(sc), _mean(pq), _mean([math.sqrt(a * b) for a, b in zip(sc, pq)]))
        groups["Average"] = tuple(_mean([groups[g][i] for g in GROUPS]) for i in range(3))
        out[subset] = groups
    return out


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")  # upstream's np.mean([]) is nan too


def counts(scores: pd.DataFrame, language: str) -> pd.DataFrame:
    """Per group of one language: rows scored (n), failed (n_failed) and failed where upstream would have
    guessed a score (upstream_guess): what the means above leave out."""
    rows = gedit_rows(scores, ok_only=False)
    rows = rows[rows["instruction_language"] == language]
    table = pd.DataFrame({
        "n": rows.groupby("group").size(),
        "n_failed": rows.assign(f=rows["status"] != "ok").groupby("group")["f"].sum(),
        "upstream_guess": rows.groupby("group")["upstream_guess"].sum(),
    }).reindex(GROUPS).fillna(0).astype(int)
    table.loc["all"] = table.sum()
    return table


def statistics_lines(scores: pd.DataFrame) -> list[str]:
    """What upstream `calculate_statistics.py --language L` prints, for each language present, then the
    rows behind each group's means."""
    lines = []
    present = set(gedit_rows(scores)["instruction_language"])
    for language in (lang for lang in LANGUAGES if lang in present):
        stats = statistics(scores, language)
        lines.append(f"\n=== GEdit-Bench statistics, language {language} (averages: mean of the 11 group means) ===")
        for subset, label in (("all", "Average"), ("intersection", "Average Intersection")):
            if subset == "intersection":
                lines.append("\nIntersection:")
            groups = stats[subset]
            lines += [f"{g}: {groups[g][0]:.3f}, {groups[g][1]:.3f}, {groups[g][2]:.3f}" for g in GROUPS]
            lines.append(f"{label}: {groups['Average'][0]:.3f}, {groups['Average'][1]:.3f}, {groups['Average'][2]:.3f}")
        table = counts(scores, language)
        lines += [f"\nRows per group ({language}; failed rows are left out of the means, as upstream leaves out "
                  "samples it could not score):", table.to_string()]
    return lines
