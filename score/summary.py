"""The end-of-run summary of a score folder: counts, overall mean/min/max, per category."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from data.manifest import latest_rows, read_manifest
from score.config import ScoreConfig
from score.templates import Template


MICRO = "all (micro: mean over samples)"
MACRO = "all (macro: mean of category means)"


def summary_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per category: n, n_ok, n_failed, mean/min/max of overall, means of semantics and quality;
    then every sample together (micro mean) and, with several categories, the mean of the category
    means (macro, as GEdit-Bench averages)."""
    frame = frame.assign(category=frame["category"].fillna("-"), ok=frame["status"] == "ok")

    def stats(group: pd.DataFrame) -> dict:
        ok = group[group["ok"]]
        row = {"n": len(group), "n_ok": int(group["ok"].sum()), "n_failed": int((~group["ok"]).sum())}
        for col in ("overall", "semantics", "quality"):
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


def print_summary(out: Path, samples: list[dict], config: ScoreConfig, template: Template) -> int:
    """Print the summary of this run's samples; returns the exit code."""
    table = read_manifest(out / "manifest")
    keys = {s["key"] for s in samples}
    frame = latest_rows(table.to_pandas()) if table is not None else pd.DataFrame(columns=["key", "status"])
    frame = frame[frame["key"].isin(keys)]
    print(f"judge: {config.model} | template {template.name} v{template.version} "
          "(scores compare only under the same judge and template)")
    if len(frame):
        with pd.option_context("display.float_format", "{:.2f}".format, "display.width", 160):
            print(summary_table(frame).to_string(na_rep="-"))
    print(f"scores: {(out / 'manifest').resolve()}")
    failed = int((frame["status"] == "failed").sum()) if len(frame) else 0
    if samples and failed == len(samples):
        return 1
    return 1 if (config.fail_on_error and failed) else 0
