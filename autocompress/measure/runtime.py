"""Deployment runtimes: the model is timed (and scored) exactly as it would run.

* ``torch``: eager PyTorch. When every weight layer has 8 bits or fewer, its linear layers run
  torch's dynamic int8 kernels (``torch.ao.quantization.quantize_dynamic``, deprecated in
  torch 2.13 but working; convolutions stay float, eager torch has no simple int8 path for them).
* ``onnxruntime`` (default): the model exported to ONNX and run by ONNX Runtime on the CPU. When
  every weight layer is quantized to 8 bits or fewer, the graph is quantized to int8 first: dynamic
  quantization (int8 weights, activations quantized on the fly) for models of linear layers,
  static QDQ quantization calibrated on training inputs (int8 activations too) for models with
  convolutions. Sub-8-bit weights have no fast CPU kernel: they run as int8, while their stored
  size counts them packed at their own width.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn

from autocompress.packing import BITS_ATTRIBUTE

RUNTIMES = ("onnxruntime", "torch")
WEIGHT_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError as exc:  # pragma: no cover - onnxruntime is a core dependency
        raise ImportError("runtime onnxruntime needs: pip install 'autocompress[onnx]'") from exc
    return onnxruntime


@contextlib.contextmanager
def _eager_attention(model: nn.Module) -> Iterator[None]:
    """Hugging Face models in their plain attention while exported: the TorchScript exporter
    cannot convert ``scaled_dot_product_attention`` with grouped KV heads (Llama); the eager
    path computes the same attention with ops it knows."""
    configs = {id(c): c for m in model.modules()
               if getattr(c := getattr(m, "config", None), "_attn_implementation", None)
               not in (None, "eager")}
    before = {key: config._attn_implementation for key, config in configs.items()}
    for config in configs.values():
        config._attn_implementation = "eager"
    try:
        yield
    finally:
        for key, config in configs.items():
            config._attn_implementation = before[key]


def export_onnx(model: nn.Module, example_input: torch.Tensor) -> bytes:
    """ONNX bytes of ``model`` with a dynamic batch dimension (TorchScript exporter, opset 17)."""
    buffer = io.BytesIO()
    model.eval()
    with warnings.catch_warnings(), _eager_attention(model):
        warnings.simplefilter("ignore")  # the exporter's deprecation notices, not ours to fix
        torch.onnx.export(
            model, (example_input[:1],), buffer, dynamo=False, opset_version=17,
            input_names=["input"], output_names=["output"],
            dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
        )
    return buffer.getvalue()


def int8_ready(model: nn.Module) -> bool:
    """True when every weight layer is quantized to 8 bits or fewer."""
    layers = [m for m in model.modules() if isinstance(m, WEIGHT_LAYERS)]
    return bool(layers) and all(getattr(m, BITS_ATTRIBUTE, 32) <= 8 for m in layers)


def torch_int8(model: nn.Module) -> nn.Module:
    """A copy whose linear layers run torch's dynamic int8 kernels; marked ``int8``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's deprecation notice
        quantized = torch.ao.quantization.quantize_dynamic(
            copy.deepcopy(model).eval(), {nn.Linear}, dtype=torch.qint8
        )
    quantized.int8 = True
    return quantized


class _Calibration:
    """ONNX Runtime's calibration reader over a few training inputs."""

    def __init__(self, inputs: torch.Tensor, batch: int = 32) -> None:
        self.batches = iter([{"input": inputs[i : i + batch].numpy()}
                             for i in range(0, len(inputs), batch)])

    def get_next(self):
        return next(self.batches, None)


def quantize_int8(onnx_model: bytes, model: nn.Module, calibration: torch.Tensor) -> bytes:
    """Int8 ONNX: dynamic for linear-only models, static QDQ (calibrated) with convolutions."""
    has_conv = any(isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d) for m in model.modules())
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # ORT's quantizer advises pre-processing on the root logger
    try:
        return _quantize_int8(onnx_model, calibration, has_conv)
    finally:
        root.setLevel(level)


def _quantize_int8(onnx_model: bytes, calibration: torch.Tensor, has_conv: bool) -> bytes:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        source, target = Path(tmp) / "float.onnx", Path(tmp) / "int8.onnx"
        source.write_bytes(onnx_model)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            if has_conv:
                quantize_static(str(source), str(target), _Calibration(calibration),
                                quant_format=QuantFormat.QDQ, per_channel=True,
                                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
            else:
                quantize_dynamic(str(source), str(target), per_channel=True,
                                 weight_type=QuantType.QInt8)
        return target.read_bytes()


class OrtModule(nn.Module):
    """An ONNX Runtime session behind the ``nn.Module`` call interface (inference only)."""

    def __init__(self, onnx_model: bytes, *, threads: int, int8: bool) -> None:
        super().__init__()
        ort = _onnxruntime()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        self.session = ort.InferenceSession(onnx_model, options,
                                            providers=["CPUExecutionProvider"])
        self.int8 = int8
        self.onnx_model = onnx_model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        array = x.detach().cpu().numpy()  # token ids stay integers; pixels go as float32
        array = np.ascontiguousarray(array, dtype=np.int64 if array.dtype.kind in "iu"
                                     else np.float32)
        return torch.from_numpy(self.session.run(None, {"input": array})[0])


class OnDevice(nn.Module):
    """Runs ``inner`` on a GPU; inputs and outputs cross to and from the host in each call, so
    timings include the transfers a served model pays."""

    def __init__(self, inner: nn.Module, device: str) -> None:
        super().__init__()
        self.inner, self.device = inner.to(device).eval(), device
        self.int8 = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x.to(self.device)).cpu()


def deploy(
    model: nn.Module, runtime: str, *, example_input: torch.Tensor, threads: int,
    calibration: torch.Tensor | None = None, device: str = "cpu",
) -> nn.Module:
    """The model as ``runtime`` runs it: itself for torch, an :class:`OrtModule` otherwise."""
    if device != "cpu":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} asked for, but torch sees no CUDA device")
        return OnDevice(copy.deepcopy(model), device)
    if runtime == "torch":
        return torch_int8(model) if int8_ready(model) else model.eval()
    if runtime != "onnxruntime":
        raise ValueError(f"unknown runtime {runtime!r}; expected one of {RUNTIMES}")
    onnx_model = export_onnx(model, example_input)
    int8 = int8_ready(model)
    if int8:
        inputs = calibration if calibration is not None else example_input
        onnx_model = quantize_int8(onnx_model, model, inputs[:256])
    return OrtModule(onnx_model, threads=threads, int8=int8)
