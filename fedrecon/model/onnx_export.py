"""``fedrecon export --format onnx``: a loaded model folder as one ONNX graph that runs on
onnxruntime alone, from prepared inputs to features, head scores, label and unknown score.

The graph is traced from the very torch modules the safetensors folder loads (the merged
adapter already folded into their weights; the frozen and folded backbones side by side
under ``adapters.features: both``), followed by the head's and the unknown score's formulas
(docs/model.md) in float64, as numpy computes them at prediction time. ``label`` is the
index of the head's own largest score, not the argmax of ``scores``: the euclidean ``ncm``
head's shown scores subtract ``|f|^2`` after the argmax, and a rounding there must not move
a label. Before the folder is written the graph is run on sample inputs beside the torch
model, and refused if the two disagree: a backbone whose own code cannot be traced as it
runs (a plug-in that prepares inputs in numpy) fails there rather than in a user's hands.
"""

from __future__ import annotations

import shutil
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from fedrecon.model.folder import ModelError, replacing, seal
from fedrecon.model.runtime import ONNX_FILE

OPSET = 17  # LayerNormalization's first opset; onnxruntime 1.18 and later run it
OUTPUTS = ["features", "scores", "label", "unknown_score"]
SAMPLE_TEXTS = ["what is my checking account balance", "wake me up at 7 tomorrow",
                "set a reminder to call the bank about the transfer I made last friday", "hi",
                "how do I say thank you in french", "book a table for four at an italian place near the office tonight"]
TOLERANCE = 1e-4  # of the scores' scale: float32 kernels differ in their last bits, not more


def _graph(model):
    """A torch module: prepared inputs -> (features, scores, label, unknown_score)."""
    import torch
    from torch import nn

    from fedrecon.backbones.efficientnet import EfficientNetLite0
    from fedrecon.learning.stats import random_projection

    text, prep = model.modality == "text", model.preprocessing
    arrays, settings = model.head.parameters()
    kind, metric = model.manifest["head"]["kind"], model.manifest["head"].get("metric")
    if kind == "ridge":
        arrays = {**arrays, "projection": random_projection(settings["seed"], model.manifest["backbone"]["dim"],
                                                            settings["size"])}
    if text and not (prep.get("tokenizer") and hasattr(model.encoder.modules[0], "tokenize")):
        raise ModelError(f"backbone {model.manifest['backbone']['name']}: a text backbone without a tokenizers "
                         "tokenizer (tokenizer.json) and tokenize(); export it as safetensors")
    for module in model.encoder.modules:
        if hasattr(module, "encode") and not (text or isinstance(module, EfficientNetLite0)):
            raise ModelError(f"backbone {model.manifest['backbone']['name']}: prepares its own inputs (encode), "
                             "which an ONNX graph cannot hold; export it as safetensors")
    unknown = {} if model.unknown is None else model.unknown.arrays

    class Graph(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbones = nn.ModuleList(model.encoder.modules)
            # float64 constants, as numpy's head and unknown score read them
            self.head = nn.ParameterDict({k: nn.Parameter(torch.from_numpy(np.array(v, dtype=np.float64)), False)
                                          for k, v in arrays.items() if k != "ids"})
            self.known = nn.ParameterDict({k: nn.Parameter(torch.from_numpy(np.array(v, dtype=np.float64)), False)
                                           for k, v in unknown.items()})

        def backbone(self, module, inputs):
            if text:
                return module(*inputs)
            x = inputs[0].float()
            if isinstance(module, EfficientNetLite0):  # EfficientNetLite0.preprocess, in torch
                x = x * 255.0 if prep["kind"] != "rgb" else x
                x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
                x = (x - 127.0) / 128.0
            return module(x)

        def forward(self, *inputs):
            f = torch.cat([self.backbone(m, inputs) for m in self.backbones], 1).double()
            unit = f / f.norm(dim=1, keepdim=True).clamp(min=1e-12)
            h = self.head
            if kind == "ncm" and metric == "cosine":
                raw = shown = unit @ h["prototypes"].T
            elif kind == "ncm":
                raw = 2 * f @ h["prototypes"].T - (h["prototypes"] ** 2).sum(1)[None, :]
                shown = raw - (f**2).sum(1, keepdim=True)
            elif kind == "lda":
                raw = shown = f @ h["weights"] + h["bias"]
            else:
                raw = shown = torch.relu(f @ h["projection"]) @ h["weights"]
            return f, shown, raw.argmax(1), self.unknown(f, unit)

        def unknown(self, f, unit):
            a = self.known
            if model.unknown is None:
                return torch.zeros_like(f[:, 0])
            if model.unknown.kind == "cosine":
                return 1.0 - (unit @ a["directions"].T).max(1).values
            g = f - a["global_mean"]
            nearest = ((f @ a["precision"]) * f).sum(1) - 2 * (f @ a["weights"] + a["bias"]).max(1).values
            return nearest - ((g @ a["global_precision"]) * g).sum(1)

    return Graph().eval()


def _samples(model) -> np.ndarray:
    """Prepared inputs to trace the graph with and to check it against torch."""
    prep, rng = model.preprocessing, np.random.default_rng(0)
    if model.modality == "text":
        texts = np.empty(len(SAMPLE_TEXTS), dtype=object)
        texts[:] = SAMPLE_TEXTS
        return texts
    if prep["kind"] == "ink":
        return (rng.random((6, 1, prep["image_size"], prep["image_size"])) < 0.15).astype(np.float32)
    if prep["kind"] == "rgb":
        return rng.integers(0, 256, (6, 3, prep["image_size"], prep["image_size"]), dtype=np.uint8)
    raise ModelError(f"preprocessing {prep['kind']!r}: a plug-in dataset's input shape is unknown to fedrecon; "
                     "export it as safetensors")


def _inputs(model, samples: np.ndarray) -> tuple[tuple, dict]:
    """Torch example inputs (two of the samples) and the manifest's description of the graph's inputs."""
    import torch

    if model.modality == "text":
        ids, mask = model.encoder.modules[0].tokenize(samples[:2])
        spec = {"dtype": "int64", "shape": ["batch", "sequence"]}
        return (ids, mask), {"input_ids": spec, "attention_mask": spec}
    return (torch.from_numpy(samples[:2]),), {"images": {"dtype": str(samples.dtype), "shape": ["batch", *samples.shape[1:]]}}


def _check(model, runtime, samples: np.ndarray) -> None:
    """Refuse a graph whose outputs on ``samples`` are not torch's."""
    mine, theirs = runtime.outputs(samples), model.runtime.outputs(samples)
    scale = max(1.0, float(np.abs(theirs.scores).max()))
    worst = max(float(np.abs(mine.scores - theirs.scores).max()), float(np.abs(mine.features - theirs.features).max()),
                0.0 if theirs.unknown is None else float(np.abs(mine.unknown - theirs.unknown).max()))
    if worst > TOLERANCE * scale:
        raise ModelError(f"the ONNX graph's outputs differ from torch's by {worst:.3g} on sample inputs "
                         f"(tolerated: {TOLERANCE * scale:.3g}); export it as safetensors")


def write_onnx(model, out: str | Path) -> dict:
    """Write ``model`` (a loaded safetensors folder) as the ONNX folder ``out``; return its manifest."""
    import torch

    from fedrecon.model.runtime import OnnxRuntime

    if model.head is None:
        raise ModelError(f"{model.folder}: already an ONNX folder")
    graph = _graph(model)  # refuses what it cannot describe, before anything is traced or written
    samples = _samples(model)
    example, inputs = _inputs(model, samples)
    axes = {name: {i: n for i, n in enumerate(spec["shape"]) if isinstance(n, str)} for name, spec in inputs.items()}
    axes.update({name: {0: "batch"} for name in OUTPUTS})
    with replacing(Path(out)) as tmp:  # out once whole and checked
        try:
            # the TorchScript exporter: it needs no onnxscript, and traces these backbones as they run.
            # Its tracer warns of shapes read as Python numbers (MiniLM's head size): constants here, and
            # the check below would catch a trace that does not generalise
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                warnings.simplefilter("ignore", DeprecationWarning)
                torch.onnx.export(graph, example, str(tmp / ONNX_FILE), dynamo=False, opset_version=OPSET,
                                  input_names=list(inputs), output_names=OUTPUTS, dynamic_axes=axes)
        except Exception as exc:  # a plug-in backbone can fail the trace in many ways: one line, with its type
            raise ModelError(f"backbone {model.manifest['backbone']['name']}: cannot be exported to ONNX "
                             f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from exc
        tokenizer = model.preprocessing.get("tokenizer")
        if tokenizer:
            shutil.copyfile(model.folder / tokenizer, tmp / tokenizer)
        batch = getattr(model.encoder.modules[0], "batch_size", 512)  # as embed batches, so padding is the same
        sealed = ("format", "version", "files", "manifest_sha256")  # seal writes them again
        body = {**{k: v for k, v in model.manifest.items() if k not in sealed}, "model_format": "onnx",
                "onnx": {"file": ONNX_FILE, "opset": OPSET, "inputs": inputs, "outputs": OUTPUTS, "batch_size": batch}}
        runtime = OnnxRuntime(tmp, body, "cpu")
        _check(model, runtime, samples)
        return seal(tmp, body)


def export_as(fmt: str, write_safetensors: Callable[[Path], dict], out: str | Path) -> dict:
    """The model folder ``out`` in format ``fmt``: ``safetensors`` is written by
    ``write_safetensors(out)`` itself; ``onnx`` converts a safetensors folder written to a
    temporary folder beside ``out`` (the run's export is the one place that reads a run)."""
    if fmt == "safetensors":
        return write_safetensors(Path(out))
    if fmt != "onnx":
        raise ModelError(f"format {fmt!r} unknown (known: safetensors, onnx)")
    from fedrecon.model.model import load_model
    from fedrecon.model.runtime import onnxruntime_module

    onnxruntime_module()  # before the run is read: one line if it is missing
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{Path(out).name}.", dir=Path(out).parent) as tmp:
        write_safetensors(Path(tmp) / "model")
        return write_onnx(load_model(Path(tmp) / "model"), out)
