"""`fedrecon report` compares run folders."""

import json

import numpy as np

from server.cli import main as fedrecon


def fake_run(folder, accuracy, bytes_up):
    folder.mkdir()
    rows = [{"round": r, "classes_seen": 10 * r, "classes_learned": 10 * r, "accuracy": accuracy - 0.01 * r,
             "bytes_up": bytes_up, "bytes_down": 100, "seconds": 0.1} for r in (1, 2)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = {"scenario": "s", "merge": "exact", "backbone": "conv4", "final_accuracy": rows[-1]["accuracy"],
               "average_incremental_accuracy": accuracy - 0.015, "classes_seen": 20, "classes_learned": 20,
               "rounds": 2, "bytes_up": 2 * bytes_up, "bytes_down": 200, "bytes_up_per_class": bytes_up / 10,
               "wall_seconds": 1.5}
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder


def test_report_table_markdown_and_plots(tmp_path, capsys):
    a = fake_run(tmp_path / "exact-run", 0.95, 5000)
    b = fake_run(tmp_path / "pixels-run", 0.45, 60000)
    out = tmp_path / "report"
    assert fedrecon(["report", str(a), str(b), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "exact-run" in printed and "0.9300" in printed and "0.4300" in printed
    md = (out / "report.md").read_text()
    assert "| exact-run | s | exact | conv4 | 20 | 0.9300 |" in md
    assert (out / "accuracy.png").stat().st_size > 1000 and (out / "bytes.png").stat().st_size > 1000


def test_report_refuses_an_unfinished_run(tmp_path, capsys):
    (tmp_path / "half").mkdir()
    assert fedrecon(["report", str(tmp_path / "half")]) == 2
    assert "no summary.json" in capsys.readouterr().err


def test_forgetting_matrix_and_client_curves():
    from server.compare import client_curves, forgetting_matrix

    plan = {"clients": 2, "arrivals": [{"round": 1, "client": 0, "classes": [1, 2]},
                                       {"round": 2, "client": 1, "classes": [3]}]}
    by_round = {1: {1: (5, 5), 2: (3, 5)}, 2: {1: (4, 5), 2: (2, 5), 3: (1, 5)}}
    m, labels, rounds = forgetting_matrix(plan, by_round)
    assert labels == ["r1 c0", "r2 c1"] and rounds == [1, 2]
    np.testing.assert_allclose(m, [[0.8, 0.6], [np.nan, 0.2]])
    assert client_curves(plan, by_round) == {0: [(1, 0.8), (2, 0.6)], 1: [(2, 0.2)]}
