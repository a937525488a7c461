"""`python -m score.report RUN [RUN_B] [--out report.html] [--gedit DIR]`: tables and an HTML report.

One run: per-category scores, throughput per device and replica, failure reasons, and a
self-contained HTML page (plots and best/worst samples embedded as data URIs). Two runs: side
by side, paired by sample key, with per-category differences and win rates. `--gedit DIR`
exports an edit run in GEdit-Bench's layout and prints its statistics (score/gedit.py).
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import sys
from pathlib import Path

import pandas as pd

from data.manifest import latest_rows, read_manifest
from score import export, gedit
from score.summary import guess_line, judge_label, summary_table

VARIED_PARAMS = ("steps", "guidance_scale", "true_cfg_scale", "height", "width", "seed")


def load_stage(folder: Path) -> pd.DataFrame:
    """Latest rows of a manifest folder (empty frame when there is none)."""
    table = read_manifest(folder)
    return latest_rows(table.to_pandas()) if table is not None else pd.DataFrame()


def load_run(run: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(generation rows, score rows) of a run folder; a bare score folder works too."""
    run = Path(run)
    is_gen_run = (run / "run.json").exists()
    gen = load_stage(run / "manifest") if is_gen_run else pd.DataFrame()
    scores = load_stage(run / "scores" / "manifest" if is_gen_run else run / "manifest")
    if scores.empty and gen.empty:
        raise SystemExit(f"error: no manifest rows under {run}")
    return gen, scores


def joined(gen: pd.DataFrame, scores: pd.DataFrame) -> pd.DataFrame:
    """Score rows with the generation parameters of the same sample."""
    if gen.empty or scores.empty:
        return scores
    params = [c for c in VARIED_PARAMS + ("model",) if c in gen]
    return scores.merge(gen[["key", *params]].rename(columns={"model": "gen_model"}), on="key", how="left")


def throughput(frame: pd.DataFrame, stage: str) -> pd.DataFrame:
    """Per device and worker: rows, ok, and rows per second over the span it was busy."""
    if frame.empty:
        return pd.DataFrame()
    out = []
    for (device, worker), g in frame.groupby(["device", "worker"], dropna=False):
        span = (g["started_at"] + g["duration_s"]).max() - g["started_at"].min()
        out.append({"stage": stage, "device": device, "worker": worker, "rows": len(g),
                    "ok": int((g["status"] == "ok").sum()), "per_s": len(g) / span if span > 0 else float("nan")})
    return pd.DataFrame(out)


def failures(gen: pd.DataFrame, scores: pd.DataFrame) -> pd.DataFrame:
    """Failure reasons (first line) with counts, per stage."""
    parts = []
    for stage, frame in (("gen", gen), ("score", scores)):
        if not frame.empty:
            failed = frame[frame["status"] == "failed"]
            reasons = failed["error"].fillna("").str.split("\n").str[0].str.slice(0, 160)
            parts.append(reasons.value_counts().rename_axis("error").reset_index().assign(stage=stage))
    frame = pd.concat(parts) if parts else pd.DataFrame(columns=["error", "count", "stage"])
    return frame[["stage", "error", "count"]].reset_index(drop=True)


def compare(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    """Per category: mean overall of A and B over the samples both scored ok, B - A, B's win rate."""
    cols = ["key", "category", "overall"]
    both = a.loc[a["status"] == "ok", cols].merge(b.loc[b["status"] == "ok", cols], on="key", suffixes=("_a", "_b"))
    both["category"] = both["category_a"].fillna("-")
    both["win"] = (both["overall_b"] > both["overall_a"]) + 0.5 * (both["overall_b"] == both["overall_a"])

    def stats(g: pd.DataFrame) -> dict:
        mean_a, mean_b = g["overall_a"].mean(), g["overall_b"].mean()
        return {"n": len(g), "mean_a": mean_a, "mean_b": mean_b, "diff": mean_b - mean_a, "win_rate_b": g["win"].mean()}

    rows = {cat: stats(g) for cat, g in both.groupby("category", sort=True)}
    rows["all"] = stats(both)
    return pd.DataFrame.from_dict(rows, orient="index")


# ---- HTML -----------------------------------------------------------------------------------

def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _thumb(path: str | None, size: int = 192) -> str:
    from PIL import Image

    if not path or not Path(path).is_file():
        return ""
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            image.thumbnail((size, size))
            buf = io.BytesIO()
            image.save(buf, format="PNG")
    except OSError:
        return ""
    return f'<img src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def plots(frame: pd.DataFrame, gen: pd.DataFrame, scores: pd.DataFrame) -> list[tuple[str, str]]:
    """(title, data URI) of each plot: score histograms, throughput over time, score vs parameters."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = []
    ok = frame[frame["status"] == "ok"] if not frame.empty else frame
    if not ok.empty and ok["overall"].notna().any():
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for cat, g in ok.groupby(ok["category"].fillna("-")):
            ax.hist(g["overall"].dropna(), bins=21, range=(0, 10), alpha=0.5, label=str(cat))
        ax.set_xlabel("overall score")
        ax.set_ylabel("samples")
        ax.legend(fontsize=7)
        out.append(("Overall score by category", _png(fig)))
    for stage, rows in (("generation", gen), ("scoring", scores)):
        if rows.empty:
            continue
        fig, ax = plt.subplots(figsize=(6, 3.5))
        t0 = rows["started_at"].min()
        for (device, worker), g in rows.groupby(["device", "worker"], dropna=False):
            done = (g["started_at"] + g["duration_s"] - t0).sort_values()
            ax.plot(done.values, range(1, len(done) + 1), label=f"{worker}: {device}")
        ax.set_xlabel("seconds since first start")
        ax.set_ylabel("rows done")
        ax.legend(fontsize=7)
        out.append((f"Throughput over time per device ({stage})", _png(fig)))
    for param in VARIED_PARAMS:
        if param in ok and ok[param].nunique() > 1 and param != "seed":
            fig, ax = plt.subplots(figsize=(5, 3))
            ax.scatter(ok[param], ok["overall"], s=10)
            ax.set_xlabel(param)
            ax.set_ylabel("overall")
            out.append((f"Overall score against {param}", _png(fig)))
    return out


def sample_cards(frame: pd.DataFrame, n: int = 4) -> tuple[str, str]:
    """HTML for the best and the worst `n` ok samples by overall score."""
    ok = frame[(frame["status"] == "ok") & frame["overall"].notna()].sort_values("overall", kind="stable")

    def cards(rows: pd.DataFrame) -> str:
        parts = []
        for r in rows.itertuples():
            source = _thumb(r.source_image) if isinstance(r.source_image, str) else ""
            parts.append(
                f'<div class="card"><div>{source}{_thumb(r.image_path)}</div>'
                f"<b>{html.escape(str(r.sample_id))}</b> ({html.escape(str(r.category))}): "
                f"overall {r.overall:.2f}<br><i>{html.escape(str(r.prompt or ''))}</i>"
                f"<br><small>{html.escape(str(r.reasoning or ''))[:400]}</small></div>"
            )
        return "".join(parts)

    return cards(ok.tail(n).iloc[::-1]), cards(ok.head(n))


def gallery(gen: pd.DataFrame, run: Path, n: int = 8) -> str:
    """HTML cards for the first `n` generated images of a run that has no scores yet (gen's image
    paths are relative to its run folder)."""
    parts = []
    for r in gen[gen["status"] == "ok"].sort_values("index").head(n).itertuples():
        source = _thumb(r.source_image) if isinstance(r.source_image, str) else ""
        parts.append(f'<div class="card"><div>{source}{_thumb(str(run / r.image_path))}</div><b>{html.escape(str(r.sample_id))}'
                     f"</b> ({html.escape(str(r.category))})<br><i>{html.escape(str(r.prompt or ''))}</i></div>")
    return "".join(parts)


def gen_table(gen: pd.DataFrame) -> pd.DataFrame:
    """Per category: generated samples, ok and failed."""
    if gen.empty:
        return pd.DataFrame()
    ok = gen["status"] == "ok"
    table = gen.assign(ok=ok, failed=~ok).groupby(gen["category"].fillna("-"))[["ok", "failed"]].sum()
    table.loc["all"] = table.sum()
    table.index.name = None
    table = table.rename(columns={"ok": "n_ok", "failed": "n_failed"})
    return table.assign(n=table.n_ok + table.n_failed)[["n", "n_ok", "n_failed"]]


def _table(frame: pd.DataFrame, title: str) -> str:
    if frame.empty:
        return ""
    body = frame.to_html(float_format=lambda x: f"{x:.2f}", na_rep="-", border=0, classes="t")
    return f'<h2>{html.escape(title)}</h2><div data-table="{html.escape(title)}">{body}</div>'


def render_html(run: Path, gen: pd.DataFrame, scores: pd.DataFrame) -> str:
    frame = joined(gen, scores)
    tables = [
        _table(summary_table(scores) if not scores.empty else gen_table(gen), "Scores per category"
               if not scores.empty else "Generated per category (not scored yet)"),
        _table(pd.concat([throughput(gen, "gen"), throughput(scores, "score")]), "Throughput per device"),
        _table(failures(gen, scores), "Failures"),
    ]
    figures = "".join(f"<h3>{html.escape(t)}</h3><img src='{uri}'>" for t, uri in plots(frame, gen, scores))
    best, worst = sample_cards(frame) if not frame.empty else ("", "")
    if scores.empty and not gen.empty:  # not scored yet: what generation made
        best, worst = gallery(gen, run), ""
    style = ("body{font-family:sans-serif;margin:2em}table.t{border-collapse:collapse}"
             "table.t td,table.t th{padding:2px 8px;border-bottom:1px solid #ddd;text-align:right}"
             ".card{display:inline-block;width:420px;vertical-align:top;margin:6px;padding:6px;border:1px solid #ccc}"
             ".card img{margin-right:4px}")
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>genscore report: {html.escape(run.name)}</title>"
        f"<style>{style}</style></head><body><h1>genscore report: {html.escape(str(run))}</h1>"
        f"<p>Judge: {html.escape(judge_label(scores))}</p>{''.join(tables)}<h2>Plots</h2>{figures}"
        f"<h2>Best samples</h2>{best}<h2>Worst samples</h2>{worst}</body></html>"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m score.report", description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="one run folder, or two to compare (A then B)")
    parser.add_argument("--out", default=None, help="HTML report path (default: <run>/report.html)")
    parser.add_argument("--gedit", default=None, help="export GEdit-Bench's layout (CSVs and images) to this folder "
                                                      "and print its statistics per language")
    parser.add_argument("--gedit-model", default=None, help="model name in the GEdit-Bench paths (default: the "
                                                            "generation model's folder name, or the run's)")
    parser.add_argument("--gedit-backbone", default=None, choices=gedit.BACKBONES,
                        help="the judge folder in the GEdit-Bench paths, as upstream calculate_statistics.py "
                             "--backbone names it (default: gpt4o for GPT judges, qwen25vl otherwise)")
    parser.add_argument("--export-dataset", default=None, help="write a `datasets` dataset here (images as Image(), "
                                                               "the gen and score rows joined per sample)")
    parser.add_argument("--push-to-hub", default=None, metavar="REPO",
                        help="with --export-dataset: also push it to this hub repository, private unless --public "
                             "(needs a token and network)")
    parser.add_argument("--public", action="store_true", help="with --push-to-hub: make the repository public")
    parser.add_argument("--export-imagefolder", default=None, help="caption runs: images + metadata.jsonl (file_name, "
                                                                   "text) here, as diffusers/kohya training reads")
    args = parser.parse_args(argv)
    if args.push_to_hub and not args.export_dataset:
        parser.error("--push-to-hub pushes the --export-dataset folder: give both")
    if len(args.runs) > 2:
        parser.error("give one run, or two to compare")
    fmt = {"float_format": "{:.2f}".format}
    if len(args.runs) == 2:
        (_, a), (_, b) = load_run(args.runs[0]), load_run(args.runs[1])
        with pd.option_context("display.width", 160, "display.float_format", fmt["float_format"]):
            print(f"A: {args.runs[0]} ({judge_label(a)})\nB: {args.runs[1]} ({judge_label(b)})")
            print(compare(a, b).to_string())
        return 0
    run = Path(args.runs[0])
    gen, scores = load_run(run)
    with pd.option_context("display.width", 160, "display.float_format", fmt["float_format"]):
        print(f"judge: {judge_label(scores)}")
        for title, frame in (("scores per category", summary_table(scores) if not scores.empty else None),
                             ("generated per category (not scored yet)", gen_table(gen) if scores.empty else None),
                             ("throughput per device", pd.concat([throughput(gen, "gen"), throughput(scores, "score")])),
                             ("failures", failures(gen, scores))):
            if frame is not None and not frame.empty:  # as the run's own summary prints its tables
                print(f"\n{title}\n{frame.to_string(na_rep='-', index=title == 'scores per category')}")
        if guess_line(scores):
            print(guess_line(scores))
    out = Path(args.out) if args.out else run / "report.html"
    out.write_text(render_html(run, gen, scores), encoding="utf-8")
    print(f"\nreport: {out.resolve()}")
    if args.export_dataset:
        dataset = export.export_dataset(run, gen, scores, Path(args.export_dataset))
        print(f"dataset: {len(dataset)} rows in {Path(args.export_dataset).resolve()}")
        if args.push_to_hub:
            dataset.push_to_hub(args.push_to_hub, private=not args.public)
            print(f"pushed: {args.push_to_hub} ({'public' if args.public else 'private'})")
    if args.export_imagefolder:
        try:
            n = export.export_imagefolder(scores, Path(args.export_imagefolder))
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"imagefolder: {n} images + metadata.jsonl in {Path(args.export_imagefolder).resolve()}")
    if args.gedit:
        return _gedit(run, gen, scores, Path(args.gedit), args.gedit_model, args.gedit_backbone)
    return 0


def _gedit(run: Path, gen: pd.DataFrame, scores: pd.DataFrame, out: Path, model: str | None,
           backbone: str | None) -> int:
    if scores.empty:
        print("error: --gedit needs a scored run", file=sys.stderr)
        return 2
    model = model or (_name(gen["model"].iloc[0]) if "model" in gen and len(gen) else run.name)
    backbone = backbone or gedit.default_backbone(scores["judge_model"].iloc[0])
    try:
        paths = gedit.export(scores, out, model, backbone)
        lines = gedit.statistics_lines(scores)
    except gedit.GEditError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"gedit: {len(paths) - 1} group CSVs and the combined CSV in {paths[0].parent.resolve()}; upstream reads "
          f"them with: python calculate_statistics.py --model_name {model} --save_path {out.resolve()} "
          f"--backbone {backbone} --language en")
    print(f"judge: {judge_label(scores)}")
    print("\n".join(lines))
    if guess_line(scores):
        print(guess_line(scores))
    return 0


def _name(model: str) -> str:
    """A model id or path as one folder name (`Qwen/Qwen-Image-Edit-2509` -> `Qwen-Image-Edit-2509`)."""
    return Path(str(model).rstrip("/")).name.replace(":", "-") or "model"


if __name__ == "__main__":
    sys.exit(main())
