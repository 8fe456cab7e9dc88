"""A model folder loaded: preprocessing, backbone, head and class names, and its predictions.

The head is the class the server scored with (:mod:`fedrecon.learning.heads`), restored
from its exported parameters, so a prediction is the run's: the label is the argmax of
the same scores over the same features (:meth:`Model.class_ids`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedrecon.learning.heads import HEADS
from fedrecon.model.encoder import Encoder
from fedrecon.model.folder import ModelError, open_folder, read_arrays
from fedrecon.model.inputs import prepare_inputs
from fedrecon.model.unknown import UNKNOWN_FILE, UnknownScore

HEAD_FILE = "head.safetensors"


class Model:
    """An exported federated classifier.

    Parameters
    ----------
    folder : str or Path
        A folder written by ``fedrecon export``; every file is checked against the
        manifest's digest first.
    device : str
        Where the backbone runs (``cpu``, ``cuda``).

    Attributes
    ----------
    manifest : dict
        ``manifest.json``: scenario, run, round, accuracy, classes, backbone, head.
    names : list of str
        Class names, one per column of :meth:`scores`.
    unknown : UnknownScore or None
        The unknown-input score (:mod:`fedrecon.model.unknown`); None in a folder exported without it.
    threshold : float or None
        The export's unknown threshold (None: every input gets a class).
    """

    def __init__(self, folder: str | Path, device: str = "cpu"):
        self.folder = Path(folder)
        self.manifest = m = open_folder(self.folder)
        try:
            head, classes, self.preprocessing, backbone = m["head"], m["classes"], m["preprocessing"], m["backbone"]
            kind = head["kind"]
            self.names = [c["name"] for c in classes]
        except (KeyError, TypeError) as exc:
            raise ModelError(f"{self.folder / 'manifest.json'}: incomplete, no {exc}") from None
        if kind not in HEADS:
            raise ModelError(f"{self.folder / 'manifest.json'}: head {kind!r} unknown here (known: {', '.join(HEADS)})")
        arrays = read_arrays(self.folder / HEAD_FILE)
        self.head = HEADS[kind].restore(arrays, {k: v for k, v in head.items() if k != "kind"})
        if [c["id"] for c in classes] != self.head.ids.tolist():
            raise ModelError(f"{self.folder}: the head's classes differ from the manifest's")
        self.encoder = Encoder(backbone, self.folder, device, self.preprocessing.get("tokenizer"))
        unknown = m.get("unknown") or {}
        self.unknown = UnknownScore(unknown["kind"], read_arrays(self.folder / UNKNOWN_FILE)) if unknown else None
        self.threshold = unknown.get("threshold")

    @property
    def modality(self) -> str:
        return self.manifest["backbone"]["modality"]

    def features(self, inputs) -> np.ndarray:
        """Backbone features ``(N, d)`` of raw inputs (see :meth:`predict`)."""
        prepared, _ = prepare_inputs(inputs, self.preprocessing)
        return self.encoder.features(prepared)

    def scores(self, features: np.ndarray) -> np.ndarray:
        """The head's scores ``(N, classes)``, larger is better: ``ncm`` the negative
        squared distance to each class mean (cosine: the cosine), ``lda`` the linear
        discriminant, ``ridge`` the ridge regression's output."""
        return self._shown(self.head.scores(features), features)

    def _shown(self, raw: np.ndarray, features: np.ndarray) -> np.ndarray:
        if self.manifest["head"]["kind"] == "ncm" and self.manifest["head"]["metric"] == "euclidean":
            # the head leaves out |f|^2, the same for every class; put back for a readable distance
            return raw - (np.asarray(features, dtype=np.float64) ** 2).sum(1, keepdims=True)
        return raw

    def class_ids(self, inputs) -> np.ndarray:
        """The dataset's class id of each input, chosen as the server's scoring chooses."""
        return self.head.predict(self.features(inputs))

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
        features = self.encoder.features(prepared)
        raw = self.head.scores(features)
        scores = self._shown(raw, features)
        # the label is the head's own argmax (the first of equal scores), as in the run's scoring
        best = raw.argmax(1) if len(features) else np.zeros(0, int)
        unknown = self.unknown.scores(features) if self.unknown is not None else [None] * len(best)
        threshold = self.threshold if unknown_threshold is None else unknown_threshold
        out = []
        for name, row, b, u in zip(names, scores, best, unknown):
            order = [int(b)] + [int(i) for i in np.argsort(-row, kind="stable") if i != b][: max(top, 1) - 1]
            rejected = threshold is not None and u is not None and u > threshold
            out.append({"input": name, "label": "unknown" if rejected else self.names[b],
                        "class_id": None if rejected else int(self.head.ids[b]), "score": float(row[b]),
                        "unknown_score": None if u is None else float(u),
                        "top": [{"label": self.names[i], "score": float(row[i])} for i in order]})
        return out


def load_model(path: str | Path, device: str = "cpu") -> Model:
    """The model of a folder written by ``fedrecon export``, checked file by file."""
    return Model(path, device)
