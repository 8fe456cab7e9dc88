"""A model folder loaded: preprocessing, class names, and its predictions.

A safetensors folder's head is the class the server scored with
(:mod:`fedrecon.learning.heads`), restored from its exported parameters, so a prediction
is the run's: the label is the argmax of the same scores over the same features
(:meth:`Model.class_ids`). An ONNX folder computes the same in one onnxruntime graph
(:mod:`fedrecon.model.onnx_export`). Which of the two runs is a runtime object
(:mod:`fedrecon.model.runtime`) the model holds, so ``predict`` is written once.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedrecon.model.folder import ModelError, open_folder
from fedrecon.model.inputs import prepare_inputs
from fedrecon.model.runtime import HEAD_FILE, OnnxRuntime, TorchRuntime

__all__ = ["HEAD_FILE", "Model", "load_model"]
RUNTIMES = {"safetensors": TorchRuntime, "onnx": OnnxRuntime}


class Model:
    """An exported federated classifier.

    Parameters
    ----------
    folder : str or Path
        A folder written by ``fedrecon export``; every file is checked against the
        manifest's digest first.
    device : str
        Where the backbone runs (``cpu``, ``cuda``).
    threads : int, optional
        An ONNX folder's CPU threads within an operator (default: onnxruntime's, one per
        core); torch's are ``torch.set_num_threads``'s.

    Attributes
    ----------
    manifest : dict
        ``manifest.json``: scenario, run, round, accuracy, classes, backbone, head.
    names : list of str
        Class names, one per column of :meth:`scores`.
    ids : np.ndarray
        The dataset's class id of each column of :meth:`scores`.
    head, encoder, unknown :
        A safetensors folder's head, backbone and unknown-input score
        (:mod:`fedrecon.model.unknown`; None in a folder exported without it); all None in
        an ONNX folder, whose graph holds them.
    threshold : float or None
        The export's unknown threshold (None: every input gets a class).
    """

    def __init__(self, folder: str | Path, device: str = "cpu", threads: int | None = None):
        self.folder = Path(folder)
        self.manifest = m = open_folder(self.folder)
        try:
            self.names = [c["name"] for c in m["classes"]]
            self.ids = np.array([c["id"] for c in m["classes"]], dtype=np.int64)
            self.preprocessing, fmt = m["preprocessing"], m.get("model_format", "safetensors")
            if fmt not in RUNTIMES:
                raise ModelError(f"{self.folder / 'manifest.json'}: model_format {fmt!r} unknown here "
                                 f"(known: {', '.join(RUNTIMES)})")
            self.runtime = RUNTIMES[fmt](self.folder, m, device, threads)
        except (KeyError, TypeError) as exc:
            raise ModelError(f"{self.folder / 'manifest.json'}: incomplete, no {exc}") from None
        self.head, self.encoder, self.unknown = self.runtime.head, self.runtime.encoder, self.runtime.unknown
        self.threshold = (m.get("unknown") or {}).get("threshold")

    @property
    def modality(self) -> str:
        return self.manifest["backbone"]["modality"]

    def features(self, inputs) -> np.ndarray:
        """Backbone features ``(N, d)`` of raw inputs (see :meth:`predict`)."""
        return self.runtime.outputs(prepare_inputs(inputs, self.preprocessing)[0]).features

    def scores(self, features: np.ndarray) -> np.ndarray:
        """The head's scores ``(N, classes)``, larger is better: ``ncm`` the negative
        squared distance to each class mean (cosine: the cosine), ``lda`` the linear
        discriminant, ``ridge`` the ridge regression's output. A safetensors folder only:
        an ONNX graph scores inputs, not features."""
        return self.runtime.scores(features)

    def class_ids(self, inputs) -> np.ndarray:
        """The dataset's class id of each input, chosen as the server's scoring chooses."""
        return self.ids[self.runtime.outputs(prepare_inputs(inputs, self.preprocessing)[0]).best]

    def predict(self, inputs, top: int = 5, unknown_threshold: float | None = None) -> list[dict]:
        """One prediction per input, in order.

        Parameters
        ----------
        inputs : list of str or np.ndarray
            Sentences (a text model); image files or folders of images (an image model);
            or an array of inputs already prepared as the run's dataset holds them.
        top : int
            How many of the best classes each prediction lists.
        unknown_threshold : float, optional
            Label ``unknown`` an input whose ``unknown_score`` is above it (default: the
            threshold the export set, if any).

        Returns
        -------
        list of dict
            ``input`` (the sentence or file), ``label`` (class name), ``class_id``,
            ``score``, ``top`` (the ``top`` best classes, each ``label`` and ``score``) and
            ``unknown_score`` (higher: more likely no learned class; None for a model
            exported without it).
        """
        prepared, names = prepare_inputs(inputs, self.preprocessing)
        _, scores, best, unknown = self.runtime.outputs(prepared)
        if unknown is None:
            unknown = [None] * len(best)
        threshold = self.threshold if unknown_threshold is None else unknown_threshold
        out = []
        for name, row, b, u in zip(names, scores, best, unknown):
            order = [int(b)] + [int(i) for i in np.argsort(-row, kind="stable") if i != b][: max(top, 1) - 1]
            rejected = threshold is not None and u is not None and u > threshold
            out.append({"input": name, "label": "unknown" if rejected else self.names[b],
                        "class_id": None if rejected else int(self.ids[b]), "score": float(row[b]),
                        "unknown_score": None if u is None else float(u),
                        "top": [{"label": self.names[i], "score": float(row[i])} for i in order]})
        return out


def load_model(path: str | Path, device: str = "cpu", threads: int | None = None) -> Model:
    """The model of a folder written by ``fedrecon export`` (either format), checked file by file."""
    return Model(path, device, threads)
