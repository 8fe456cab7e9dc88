"""Where a model folder's predictions are computed: the run's own code (torch backbone,
numpy head) for a safetensors folder, one onnxruntime session for an ONNX folder.

:class:`fedrecon.model.model.Model` holds one of the two and asks it for
:class:`Outputs`; both give the same four arrays, so ``predict`` is written once. The
ONNX side imports onnxruntime when a folder is opened, never at import time, and only
onnxruntime, numpy and tokenizers: no torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np

from fedrecon.model.folder import ModelError, read_arrays

HEAD_FILE = "head.safetensors"
ONNX_FILE = "model.onnx"
PIP_ONNX = "pip install 'fedrecon[onnx]'"


class Outputs(NamedTuple):
    """What a model computes for prepared inputs, one row each."""

    features: np.ndarray  # (N, d) float64: the backbone's features, as the run's scoring computed them
    scores: np.ndarray  # (N, K) float64: Model.scores, larger is better
    best: np.ndarray  # (N,) int: the label's column, the head's own argmax (the first of equal scores)
    unknown: np.ndarray | None  # (N,) float64: the unknown-input score; None when the folder has none


def shown_scores(manifest: dict, raw: np.ndarray, features: np.ndarray) -> np.ndarray:
    """The head's scores as fedrecon shows them: the euclidean ``ncm`` head leaves out ``|f|^2``,
    the same for every class; it is put back so that a score reads as a negative squared distance."""
    head = manifest["head"]
    if head["kind"] == "ncm" and head.get("metric") == "euclidean":
        return raw - (np.asarray(features, dtype=np.float64) ** 2).sum(1, keepdims=True)
    return raw


class TorchRuntime:
    """The safetensors folder: the backbone in torch, the head and unknown score in numpy,
    restored from their exported parameters (the classes the server scored with)."""

    def __init__(self, folder: Path, manifest: dict, device: str = "cpu", threads: int | None = None):
        # threads: torch's own setting (torch.set_num_threads) is the process's, left as it is
        from fedrecon.learning.heads import HEADS
        from fedrecon.model.encoder import Encoder
        from fedrecon.model.unknown import UNKNOWN_FILE, UnknownScore

        head, classes = manifest["head"], manifest["classes"]
        if head["kind"] not in HEADS:
            raise ModelError(f"{folder / 'manifest.json'}: head {head['kind']!r} unknown here (known: {', '.join(HEADS)})")
        self.manifest = manifest
        self.head = HEADS[head["kind"]].restore(read_arrays(folder / HEAD_FILE),
                                                {k: v for k, v in head.items() if k != "kind"})
        if [c["id"] for c in classes] != self.head.ids.tolist():
            raise ModelError(f"{folder}: the head's classes differ from the manifest's")
        self.encoder = Encoder(manifest["backbone"], folder, device, manifest["preprocessing"].get("tokenizer"))
        unknown = manifest.get("unknown") or {}
        self.unknown = UnknownScore(unknown["kind"], read_arrays(folder / UNKNOWN_FILE)) if unknown else None

    def scores(self, features: np.ndarray) -> np.ndarray:
        return shown_scores(self.manifest, self.head.scores(features), features)

    def outputs(self, prepared: np.ndarray) -> Outputs:
        features = self.encoder.features(prepared)
        raw = self.head.scores(features)
        best = raw.argmax(1) if len(features) else np.zeros(0, int)
        unknown = self.unknown.scores(features) if self.unknown is not None else None
        return Outputs(features, shown_scores(self.manifest, raw, features), best, unknown)


def onnxruntime_module():
    """onnxruntime, or one line saying how to install it."""
    try:
        import onnxruntime
    except ImportError:
        raise ModelError(f"this is an ONNX model folder and onnxruntime is not installed: {PIP_ONNX}") from None
    return onnxruntime


def onnx_session(path: Path, device: str = "cpu", threads: int | None = None):
    """An onnxruntime session of ``path`` with every graph optimisation; ``threads`` CPU threads
    within an operator (None: onnxruntime's default, one per physical core)."""
    ort = onnxruntime_module()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = int(threads)
    providers = ["CPUExecutionProvider"]
    if str(device).startswith("cuda"):
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise ModelError(f"device {device}: this onnxruntime has no CUDA provider (pip install onnxruntime-gpu)")
        providers.insert(0, "CUDAExecutionProvider")
    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own kinds for a file that is no valid graph
        raise ModelError(f"{path}: not a graph onnxruntime can run ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''})") from None


class OnnxRuntime:
    """The ONNX folder: one graph from prepared inputs to features, scores, label and
    unknown score (docs/model.md, "The ONNX folder"); sentences tokenized by the folder's
    ``tokenizer.json``, in batches of the backbone's own size, as the run's embedding padded them."""

    head = encoder = unknown = None  # inside the graph

    def __init__(self, folder: Path, manifest: dict, device: str = "cpu", threads: int | None = None):
        try:
            info = manifest["onnx"]
            self.inputs, self.batch_size = dict(info["inputs"]), int(info["batch_size"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"{folder / 'manifest.json'}: incomplete onnx entry, no {exc}") from None
        self.session = onnx_session(folder / ONNX_FILE, device, threads)
        names = {i.name for i in self.session.get_inputs()}, {o.name for o in self.session.get_outputs()}
        if names != (set(self.inputs), {"features", "scores", "label", "unknown_score"}):
            raise ModelError(f"{folder / ONNX_FILE}: inputs {sorted(names[0])} and outputs {sorted(names[1])} "
                             "are not the ones the manifest names")
        self.has_unknown = bool(manifest.get("unknown"))
        self.tokenizer = None
        tokenizer = manifest["preprocessing"].get("tokenizer")
        if tokenizer:
            from tokenizers import Tokenizer

            self.tokenizer = Tokenizer.from_str((folder / tokenizer).read_text(encoding="utf-8"))

    def scores(self, features: np.ndarray) -> np.ndarray:
        raise ModelError("an ONNX model's head is inside its graph: it scores inputs (predict), not features")

    def feeds(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """The graph's inputs for one batch of prepared inputs."""
        if self.tokenizer is not None:
            encoded = self.tokenizer.encode_batch([str(t) for t in batch])
            return {"input_ids": np.array([e.ids for e in encoded], dtype=np.int64),
                    "attention_mask": np.array([e.attention_mask for e in encoded], dtype=np.int64)}
        (name, spec), = self.inputs.items()
        return {name: np.ascontiguousarray(batch, dtype=spec["dtype"])}

    def outputs(self, prepared: np.ndarray) -> Outputs:
        parts = [self.session.run(["features", "scores", "label", "unknown_score"], self.feeds(prepared[i:i + self.batch_size]))
                 for i in range(0, len(prepared), self.batch_size)]
        if not parts:
            shapes = {o.name: o.shape for o in self.session.get_outputs()}  # (batch, d) and (batch, K)
            parts = [[np.zeros((0, shapes["features"][1])), np.zeros((0, shapes["scores"][1])), np.zeros(0, int),
                      np.zeros(0)]]
        features, scores, best, unknown = (np.concatenate(a) for a in zip(*parts))
        return Outputs(features, scores, best, unknown if self.has_unknown else None)
