"""The end-of-run summary of a score folder: counts, overall mean/min/max, per category."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from data.manifest import latest_rows, read_manifest
from score.config import ScoreConfig
from score.templates import Template


MICRO = "all (micro: mean over samples)"
MACRO = "all (macro: mean of category means)"


# EditScore reports its own fields (EditScore.evaluate): prompt following = SC[0], consistency = SC[1],
# perceptual quality = min(PQ); its tables show those instead of our semantics / quality.
EDITSCORE_FIELDS = ("prompt_following", "consistency", "perceptual_quality")


def part_columns(frame: pd.DataFrame) -> tuple[pd.DataFrame, tuple[str, ...]]:
    """The frame with the columns its protocol reports besides overall, and their names."""
    if len(frame) and "template" in frame and (frame["template"] == "editscore-edit").all():
        subs = frame["sub_scores"].map(lambda s: json.loads(s) if isinstance(s, str) else {})
        return frame.assign(**{f: subs.map(lambda d, f=f: d.get(f)) for f in EDITSCORE_FIELDS}), EDITSCORE_FIELDS
    return frame, ("semantics", "quality")


def summary_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per category: n, n_ok, n_failed, mean/min/max of overall, means of semantics and quality (or
    EditScore's fields); then every sample together (micro mean) and, with several categories, the
    mean of the category means (macro, as GEdit-Bench averages)."""
    frame, parts = part_columns(frame.assign(category=frame["category"].fillna("-"), ok=frame["status"] == "ok"))

    def stats(group: pd.DataFrame) -> dict:
        ok = group[group["ok"]]
        row = {"n": len(group), "n_ok": int(group["ok"].sum()), "n_failed": int((~group["ok"]).sum())}
        for col in ("overall", *parts):
            values = ok[col].dropna()
            row[f"{col}_mean"] = values.mean() if len(values) else float("nan")
            if col == "overall":
                row["overall_min"] = values.min() if len(values) else float("nan")
                row["overall_max"] = values.max() if len(values) else float("nan")
        return row

    rows = {cat: stats(g) for cat, g in frame.groupby("category", sort=True)}
    categories = pd.DataFrame.from_dict(rows, orient="index")
    rows[MICRO] = stats(frame)
    if len(categories) > 1:
        means = [c for c in categories if c.endswith("_mean")]
        rows[MACRO] = {"n": len(frame), "n_ok": rows[MICRO]["n_ok"], "n_failed": rows[MICRO]["n_failed"],
                       **categories[means].mean().to_dict()}
    return pd.DataFrame.from_dict(rows, orient="index")


def judge_label(scores: pd.DataFrame) -> str:
    """Which judge, template and decoding made these scores: they compare only under the same three."""
    if scores.empty:
        return "no scores"
    frame = scores.assign(decoding=scores["decoding"].fillna("schema") if "decoding" in scores else "schema")
    triples = frame[["judge_model", "template", "template_version", "decoding"]].drop_duplicates()
    return "; ".join(f"{m} | template {t} v{v} | {d} decoding" for m, t, v, d in triples.itertuples(index=False))


def guess_line(scores: pd.DataFrame) -> str | None:
    """How many failed rows the protocol's reference would have scored with an invented number."""
    if scores.empty or "decoding" not in scores or not (scores["decoding"] == "free").any():
        return None
    guessed = int(scores["upstream_guess"].fillna(False).astype(bool).sum())
    return (f"upstream would have guessed {guessed} score{'s' * (guessed != 1)} (failed rows here: the reference "
            "draws a random score where it cannot read an answer)")


def tokens_line(frame: pd.DataFrame, price_in: float | None, price_out: float | None) -> str:
    """The tokens the judge read and wrote for these rows (the API's usage, or the engine's counts), and
    what they cost at the given prices per million."""
    tokens_in = int(frame["prompt_tokens"].fillna(0).sum())
    tokens_out = int(frame["output_tokens"].fillna(0).sum())
    line = f"tokens: {tokens_in:,} in, {tokens_out:,} out"
    if price_in is not None or price_out is not None:
        cost = tokens_in / 1e6 * (price_in or 0) + tokens_out / 1e6 * (price_out or 0)
        line += f"; cost {cost:,.4f} at {price_in or 0:g} / {price_out or 0:g} per million tokens in / out"
    return line


def print_summary(out: Path, samples: list[dict], config: ScoreConfig, template: Template) -> int:
    """Print the summary of this run's samples; returns the exit code."""
    table = read_manifest(out / "manifest")
    keys = {s["key"] for s in samples}
    frame = latest_rows(table.to_pandas()) if table is not None else pd.DataFrame(columns=["key", "status"])
    frame = frame[frame["key"].isin(keys)]
    label = judge_label(frame) if len(frame) else f"{config.model} | template {template.name} v{template.version}"
    print(f"judge: {label} (scores compare only under the same judge, template and decoding)")
    if len(frame):
        with pd.option_context("display.float_format", "{:.2f}".format, "display.width", 160):
            print(summary_table(frame).to_string(na_rep="-"))
        if guess_line(frame):
            print(guess_line(frame))
        print(tokens_line(frame, config.price_in, config.price_out))
    print(f"scores: {(out / 'manifest').resolve()}")
    failed = int((frame["status"] == "failed").sum()) if len(frame) else 0
    if samples and failed == len(samples):
        return 1
    return 1 if (config.fail_on_error and failed) else 0
