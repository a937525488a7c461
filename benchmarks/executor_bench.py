"""How many rows per second the local executor's parent can route: work out to the workers, rows
back, each row written to a manifest (journal line, shards), as in `score.run`.

    python benchmarks/executor_bench.py --workers 2 --items 20000

The workers run a stage that answers at once with a score-sized row (a 300-character caption), so
the only limit left is the parent process and the pipes. Compare the figure with a real run's
images/s: if it is far higher, the parent is not what holds replicas back. CPU only; no model.
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


class Echo:
    """A stage that scores nothing: one ok row per item, at once."""

    prefetch = 256  # as a scoring replica asks ahead

    def __init__(self, config: None, device: str):
        pass  # the stage contract: Stage(config, device)

    def process(self, feed: Iterable[dict]) -> Iterator[dict]:
        for item in feed:
            now = time.time()
            yield {"key": item["key"], "index": item["index"], "image_path": item["image_path"], "status": "ok",
                   "caption": "a caption of the usual length " * 10, "started_at": now, "duration_s": 0.0}


def failed(item: dict, reason: str) -> dict:
    return {"key": item["key"], "index": item["index"], "status": "failed", "error": reason}


def main() -> None:
    from data.manifest import SCORE_SCHEMA, ManifestWriter
    from pool.executor import Executor

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--items", type=int, default=20000)
    args = parser.parse_args()
    items = [{"key": f"{i:07d}", "index": i, "image_path": f"/data/images/{i:07d}.png", "prompt": "p" * 150}
             for i in range(args.items)]
    arrivals: list[float] = []
    with tempfile.TemporaryDirectory() as folder:
        writer = ManifestWriter(Path(folder) / "manifest", SCORE_SCHEMA)

        def on_row(row: dict) -> None:
            writer.add(row)
            arrivals.append(time.time())

        start = time.time()
        Executor(f"{Path(__file__).stem}:Echo", None, ["cpu"] * args.workers, on_row, failed).run(items)
        wall = time.time() - start
        writer.close()
    span = arrivals[-1] - arrivals[0]
    print(json.dumps({"workload": f"{args.items} items, {args.workers} workers, an instant stage",
                      "rows": len(arrivals), "rows_per_s": round(len(arrivals) / span), "wall_s": round(wall, 2)}))


if __name__ == "__main__":
    main()
