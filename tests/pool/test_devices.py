"""What each worker process is told about its device."""

from pool.devices import process_env


def test_gpu_workers_get_one_openmp_thread_unless_the_user_chose(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert process_env("cuda:0+1", 0, 0) == {"CUDA_VISIBLE_DEVICES": "0,1", "OMP_NUM_THREADS": "1"}
    monkeypatch.setenv("OMP_NUM_THREADS", "6")
    assert process_env("cuda:2", 1, 0) == {"CUDA_VISIBLE_DEVICES": "2", "OMP_NUM_THREADS": "6"}


def test_cpu_workers_split_the_cores(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    envs = [process_env("cpu", slot, 2) for slot in range(2)]
    assert [env["OMP_NUM_THREADS"] for env in envs] == ["4", "4"]
    assert [env["VLLM_CPU_OMP_THREADS_BIND"] for env in envs] == ["0-3", "4-7"]
