"""The end table's GPU figures: utilisation is the worker's working time, memory its peak."""

from pool.progress import Progress


def test_gpu_utilisation_is_averaged_over_the_working_time_not_the_load():
    progress = Progress(total=2, mode="none")
    progress.gpus.close()  # no sampling of its own: NVML's readings are given below (a CPU machine has none)
    progress.worker_started(0, "cuda:0")
    progress.slots[0].gpus = ["0"]
    progress.slots[0].started = 0.0
    progress.slots[0].ready = 100.0  # 100 s of loading at 0%, then 20 s of work at 90%
    progress.slots[0].last = 120.0
    progress.slots[0].ok = 2
    progress.gpus.samples = {"0": [(t, 0.0, 70.0) for t in range(0, 100, 10)] +
                                  [(t, 90.0, 75.0) for t in range(100, 121, 5)] + [(130.0, 0.0, 10.0)]}
    table = progress.table()
    assert "90%" in table and "75.0GiB" in table, table
    assert progress.gpus.summary(["0"]) == (sum(u for _, u, _ in progress.gpus.samples["0"]) / 16, 75.0)
