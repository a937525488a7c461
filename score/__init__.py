"""Judging and captioning: `python -m score.run` (files), `score.Scorer` (Python API), `python -m score.serve` (HTTP)."""


def __getattr__(name: str):
    if name == "Scorer":  # imported on first use: `import score.run` stays free of the service's imports
        from score.scorer import Scorer

        return Scorer
    raise AttributeError(f"module 'score' has no attribute {name!r}")
