"""How many rows per second the local executor can route: work out to the workers, each row
written by its worker to the manifest (journal line, shards), an acknowledgement back, as in `score.run`.

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
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


from pool.stage import Feed, Stage, items_of  # noqa: E402


class Echo(Stage):
    """A stage that scores nothing: one ok row per item, at once."""

    prefetch = 256  # as a scoring replica asks ahead

    def load(self, device: str) -> None:
        pass

    def failed_row(self, item: dict, reason: str) -> dict:
        return {"key": item["key"], "index": item["index"], "status": "failed", "error": reason}

    def process(self, feed: Feed) -> Iterator[dict]:
        for item in items_of(feed):
            now = time.time()
            yield {"key": item["key"], "index": item["index"], "image_path": item["image_path"], "status": "ok",
                   "caption": "a caption of the usual length " * 10, "started_at": now, "duration_s": 0.0,
                   "attempt": 1}


class Timed:
    """Progress that keeps each row's arrival time at the parent."""

    def __init__(self):
        self.arrivals: list[float] = []

    def add_total(self, n: int) -> None:
        pass

    def worker_started(self, slot: int, device: str) -> None:
        pass

    def row(self, slot: int, ok: bool) -> None:
        self.arrivals.append(time.time())

    def close(self) -> None:
        pass


def main() -> None:
    from data.manifest import SCORE_SCHEMA
    from pool.devices import Placement
    from pool.executor import LocalExecutor
    from pool.stage import ExecutorOptions, FaultPolicy, FixedWork, Output

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--items", type=int, default=20000)
    args = parser.parse_args()
    items = [{"key": f"{i:07d}", "index": i, "image_path": f"/data/images/{i:07d}.png", "prompt": "p" * 150}
             for i in range(args.items)]
    timed = Timed()
    with tempfile.TemporaryDirectory() as folder:
        start = time.time()
        LocalExecutor(Placement(["cpu"] * args.workers), FaultPolicy(), ExecutorOptions()).run(
            Echo(), FixedWork(items), Output(str(Path(folder) / "manifest"), SCORE_SCHEMA), timed)
        wall = time.time() - start
    arrivals = timed.arrivals
    span = arrivals[-1] - arrivals[0]
    print(json.dumps({"workload": f"{args.items} items, {args.workers} workers, an instant stage",
                      "rows": len(arrivals), "rows_per_s": round(len(arrivals) / span), "wall_s": round(wall, 2)}))


if __name__ == "__main__":
    main()
