"""Peak inference memory: measured in a fresh process, as the operating system counts it.

A child Python process imports the runtime, notes its resident memory (``VmRSS``), loads the
model, runs one inference on a batch, and reports its high-water mark (``VmHWM``) minus that
baseline: the memory one inference really needs, loaded weights, runtime arenas and activations
included. A fresh process is the only way to see it: inside a long-lived process, allocators
reuse memory that earlier work already made resident. Linux only (``/proc``); costs a process
start per measurement, so it runs only when a budget or an objective asks for peak memory.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

_CHILD = r"""
import json, sys
def rss(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(field + " not in /proc/self/status")
runtime, model_path = sys.argv[1], sys.argv[2]
shape, threads = json.loads(sys.argv[3]), int(sys.argv[4])
import numpy as np
if runtime == "onnxruntime":
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    base = rss("VmRSS")
    session = ort.InferenceSession(model_path, options, providers=["CPUExecutionProvider"])
    session.run(None, {"input": np.zeros(shape, dtype=np.float32)})
else:
    import torch
    torch.set_num_threads(threads)
    base = rss("VmRSS")
    model = torch.jit.load(model_path)
    with torch.inference_mode():
        model(torch.zeros(shape))
print(json.dumps({"peak": rss("VmHWM") - base}))
"""


def peak_inference_bytes(
    deployed: nn.Module, example_input: torch.Tensor, *, batch_size: int, threads: int,
    timeout_s: float = 120.0,
) -> int:
    """Peak resident bytes of loading ``deployed`` and running one batch, in a fresh process."""
    shape = [batch_size, *example_input.shape[1:]]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model"
        if hasattr(deployed, "onnx_model"):
            runtime = "onnxruntime"
            path.write_bytes(deployed.onnx_model)
        else:
            runtime = "torch"
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                torch.jit.trace(deployed.eval(), example_input[:1]).save(str(path))
        done = subprocess.run(
            [sys.executable, "-c", _CHILD, runtime, str(path), json.dumps(shape), str(threads)],
            capture_output=True, text=True, timeout=timeout_s,
        )
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"peak memory measurement failed: {last}")
    return int(json.loads(done.stdout.strip().splitlines()[-1])["peak"])


def available_memory_bytes() -> int | None:
    """Memory the machine can give a new process now (``MemAvailable``), or None off Linux."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None
