"""The documented commands with only their required flags: each works, or fails with one clear line
and exit 2 (defaults that fit together; no tracebacks for a user's mistake)."""

import shutil

import pandas as pd

from helpers import ROOT, run_cli, shape_image


def _one_clear_line(proc) -> str:
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "leaked semaphore" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    return errors[0]


def test_gen_edit_takes_the_edit_model_and_the_sources_aspect_ratio(tmp_path, tiny_models):
    # the bundled edit tasks with no --model: the tiny edit pipeline; no size: the source's aspect
    # ratio (--area keeps this test small; the default is the pipeline's own ~1024x1024 area)
    out = tmp_path / "edit"
    run_cli("gen.run", "--task", "edit", "--input", "data/samples/edit/tasks.jsonl", "--output-dir", str(out),
            "--num-samples", "2", "--steps", "2", "--area", "4096", "--progress", "none")
    frame = pd.read_parquet(out / "manifest")
    assert (frame["status"] == "ok").all() and set(frame["model"]) == {"tiny:edit"}, frame["error"].tolist()
    for row in frame.itertuples():
        from PIL import Image

        w, h = Image.open(row.source_image).size
        assert abs(row.width / row.height - w / h) < 0.35 and row.width * row.height <= 2 * 4096


def test_gen_refuses_a_pipeline_unfit_for_the_task_before_any_worker(tmp_path, tiny_models):
    proc = run_cli("gen.run", "--task", "t2i", "--model", "tiny:edit", "--output-dir", str(tmp_path / "x"),
                   check=False, timeout=120)
    assert "QwenImageEditPipeline edits images; use --task edit" in _one_clear_line(proc)
    assert not (tmp_path / "x").exists()
    for bad, message in ((["--area", "0", "--task", "edit"], "--area takes a positive number"),
                         (["--height", "64"], "give both --height and --width")):
        proc = run_cli("gen.run", *bad, "--output-dir", str(tmp_path / "y"), check=False, timeout=120)
        assert message in _one_clear_line(proc)


def test_score_run_with_only_the_input_flag(scored_run, tmp_path):
    # the default judge (tiny, 4096 positions) under the default --max-model-len (8192): fitted, not an error
    run = tmp_path / "run"
    shutil.copytree(scored_run, run, ignore=shutil.ignore_patterns("scores"))
    proc = run_cli("score.run", "--input", str(run), "--progress", "none")
    scores = pd.read_parquet(run / "scores" / "manifest")
    assert len(scores) == 9 and (scores["status"] == "ok").all(), scores["error"].tolist()
    assert "Traceback" not in proc.stderr and "WARNING" not in proc.stderr  # engine logs stay in RUN/scores/logs
    assert (run / "scores" / "logs" / "worker-0.log").stat().st_size > 0


def test_score_caption_folder_and_a_judge_that_cannot_start(tmp_path, tiny_models):
    folder = tmp_path / "shapes"
    for i in range(2):
        shape_image(folder / f"s{i}.png", (90 * i, 20, 200))
    run_cli("score.run", "--task", "caption", "--input", str(folder), "--progress", "none", "--max-tokens", "32")
    captions = pd.read_parquet(tmp_path / "shapes-scores" / "manifest")
    assert len(captions) == 2 and captions["caption"].notna().all()
    # a judge folder vLLM cannot load: one line naming the cause and where its traceback is
    proc = run_cli("score.run", "--task", "caption", "--input", str(folder), "--model", str(ROOT / "data"),
                   "--output-dir", str(tmp_path / "bad"), "--progress", "none", check=False)
    line = _one_clear_line(proc)
    assert line.startswith("error: no worker could start: ") and str(tmp_path / "bad" / "logs") in line


def test_pickled_weights_are_refused_before_anything_loads():
    proc = run_cli("score.run", "--load-format", "pt", "--progress", "none", check=False)
    assert proc.returncode == 2 and "invalid choice: 'pt'" in proc.stderr


def test_inputs_that_cannot_serve_the_task_and_numbers_out_of_range_stop_at_the_command_line(tmp_path):
    # sources with instructions (an input for gen) given to score as edits: one line, nothing started
    proc = run_cli("score.run", "--task", "edit", "--input", "data/samples/edit/tasks.jsonl", "--output-dir",
                   str(tmp_path / "s"), check=False, timeout=120)
    assert "--task edit judges an edited image against its source" in _one_clear_line(proc)
    assert "tiny test judge with random weights" in proc.stderr and not (tmp_path / "s").exists()
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"id": "a", "words": "a red circle"}\n')  # no column named as a prompt
    proc = run_cli("gen.run", "--input", str(prompts), "--output-dir", str(tmp_path / "g"), check=False, timeout=120)
    assert "no row has a prompt: name its column with --prompt-column" in _one_clear_line(proc)
    for module, flag, value, message in (("score.run", "--max-pixels", "0", "--max-pixels takes a number above 0"),
                                         ("score.run", "--gpu-memory-utilization", "1.5", "at most 1, not 1.5"),
                                         ("gen.run", "--steps", "-2", "--steps takes a number above 0, not -2")):
        proc = run_cli(module, flag, value, "--input", "x", check=False, timeout=120)
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
