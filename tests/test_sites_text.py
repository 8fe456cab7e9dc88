"""Sites that read text: CSV and JSONL files of CLINC150 sentences on MiniLM."""

from __future__ import annotations

import yaml

from fedrecon.model.model import load_model
from tests.conftest import DATA_ROOT
from tests.test_sites import Rounds
from tests.test_strategy import identity  # noqa: F401 (fixture: messages built outside a Flower app)


def test_text_sites_learn_rows_appended_between_rounds(tmp_path):
    """CSV and JSONL sites (CLINC150 sentences on MiniLM): a row appended to a site's file
    between rounds is its next task; the node's model reads sentences."""
    import csv
    import json

    items = json.loads((DATA_ROOT / "clinc150" / "data_full.json").read_text())
    intents = ["balance", "bill_due", "transfer", "weather", "alarm", "timer"]
    rows = {i: [t for t, y in items["train"] if y == i][:8] for i in intents}
    tests = {i: [t for t, y in items["test"] if y == i][:4] for i in intents}
    a, b = tmp_path / "site-a", tmp_path / "site-b"
    a.mkdir(), b.mkdir()

    def write_csv(path, pairs):
        with path.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["text", "label"])
            w.writerows(pairs)

    write_csv(a / "train.csv", [(t, i) for i in intents[:3] for t in rows[i][:6]])
    write_csv(a / "test.csv", [(t, i) for i in intents[:3] for t in tests[i]])
    (b / "train.jsonl").write_text("".join(json.dumps({"text": t, "label": i}) + "\n" for i in intents[3:] for t in rows[i]))
    raw = {"name": "text-sites", "model": {"backbone": "all-minilm-l6-v2", "device": "cpu"}, "clients": {"count": 2},
           "sites": {"folders": [str(a), str(b)], "read": "text"}, "rounds": 2, "merge": {"head": "ncm"},
           "evaluation": {"where": "clients"}}
    path = tmp_path / "text.yaml"
    path.write_text(yaml.safe_dump(raw))
    run = Rounds(path, tmp_path / "run")
    run.round(1)
    assert {n: int(c) for n, (c, _) in run.by_name().items()} == {**{i: 6 for i in intents[:3]}, **{i: 8 for i in intents[3:]}}
    with (a / "train.csv").open("a", newline="") as f:
        csv.writer(f).writerows([(t, i) for i in intents[:3] for t in rows[i][6:]])
    run.round(2)
    assert {n: int(c) for n, (c, _) in run.by_name().items()} == {i: 8 for i in intents}
    model = load_model(b / ".fedrecon" / "model")
    assert model.predict(["what is my checking account balance"])[0]["label"] == "balance"
    assert run.run.recorder.rows[-1]["accuracy"] >= 0.75  # site a's 12 test sentences
