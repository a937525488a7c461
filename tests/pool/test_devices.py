"""What each worker process is told about its device."""

import pytest

from pool.devices import describe, plan_devices, process_env


def test_gpu_workers_get_one_openmp_thread_unless_the_user_chose(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert process_env("cuda:0+1", 0, 0) == {"CUDA_VISIBLE_DEVICES": "0,1", "OMP_NUM_THREADS": "1"}
    monkeypatch.setenv("OMP_NUM_THREADS", "6")
    assert process_env("cuda:2", 1, 0) == {"CUDA_VISIBLE_DEVICES": "2", "OMP_NUM_THREADS": "6"}


def test_cpu_workers_split_the_cores(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    envs = [process_env("cpu", slot, 2) for slot in range(2)]
    assert [env["OMP_NUM_THREADS"] for env in envs] == ["4", "4"]
    assert [env["VLLM_CPU_OMP_THREADS_BIND"] for env in envs] == ["0-3", "4-7"]


def test_gpu_indexes_count_within_the_schedulers_visible_set(monkeypatch):
    """CUDA_VISIBLE_DEVICES=2,3 (Slurm): our cuda:0 is GPU 2, and UUIDs or MIG names pass through."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    devices = plan_devices(None, None)
    assert devices == ["cuda:0", "cuda:1"]
    assert [process_env(d, i, 0)["CUDA_VISIBLE_DEVICES"] for i, d in enumerate(devices)] == ["2", "3"]
    assert describe(devices) == "cuda:0 (GPU 2), cuda:1 (GPU 3)"
    assert process_env(plan_devices(None, [1])[0], 0, 0)["CUDA_VISIBLE_DEVICES"] == "3"  # --gpus 1
    assert process_env(plan_devices(None, None, group_size=2)[0], 0, 0)["CUDA_VISIBLE_DEVICES"] == "2,3"
    with pytest.raises(ValueError, match="GPU index 2 is not among the 2 visible GPUs"):
        plan_devices(None, [2])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-8f1c,MIG-5a2e/1/0")
    assert process_env("cuda:1", 0, 0)["CUDA_VISIBLE_DEVICES"] == "MIG-5a2e/1/0"
    assert describe(["cuda:0+1", "cpu"]) == "cuda:0+1 (GPU GPU-8f1c+MIG-5a2e/1/0), cpu"
