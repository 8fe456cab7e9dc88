"""`fedrecon report` compares run folders."""

import json
from pathlib import Path

import numpy as np

from server.cli import main as fedrecon


def fake_run(folder, accuracy, bytes_up, scenario=None):
    folder.mkdir()
    rows = [{"round": r, "classes_seen": 10 * r, "classes_learned": 10 * r, "accuracy": accuracy - 0.01 * r,
             "bytes_up": bytes_up, "bytes_down": 100, "seconds": 0.1} for r in (1, 2)]
    if scenario is not None:  # the scenario as run: the keys it set
        (folder / "scenario.json").write_text(json.dumps({"name": "s", "clients": {"count": 2}, "tasks": {
            "num_classes": 20, "classes_per_task": 5, "train_shots": 5, "test_shots": 5}, **scenario}))
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
    # no scenario.json: compared by their summaries, which agree on every setting
    assert "same in every run: merge.prototypes exact, model.backbone conv4" in md
    assert "| exact-run | 20 | 0.9300 |" in md
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


def test_report_has_a_column_for_every_key_that_differs(tmp_path, capsys):
    # Prepare: two runs of one scenario, one with the lda head and secure aggregation
    a = fake_run(tmp_path / "ncm", 0.95, 5000, {})
    b = fake_run(tmp_path / "lda", 0.95, 5000, {"merge": {"head": "lda"},
                                                   "privacy": {"secure_aggregation": True}})
    out = tmp_path / "report"
    # Execute
    assert fedrecon(["report", str(a), str(b), "--out", str(out)]) == 0
    # Assert: the keys that differ are columns, the shared headline settings a line above
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == ("same in every run: merge.method prototypes, merge.prototypes exact, model.backbone conv4, "
                          "privacy.dp false")
    assert printed[2].split() == ["run", "merge.head", "privacy.secure_aggregation", "classes", "final",
                                  "acc", "avg", "inc", "acc", "epsilon", "noise", "std", "up", "/", "class", "bytes", "up",
                                  "bytes", "down", "wall", "s"]
    assert printed[4].split()[:3] == ["ncm", "ncm", "false"]
    assert printed[5].split()[:3] == ["lda", "lda", "true"]


def test_legends_name_the_settings_and_every_run_has_its_own_style():
    from server.differences import label
    from server.plots import STYLES, style

    settings = {"name": "s", "merge.head": "lda", "privacy.secure_aggregation": True}
    assert label("run-b", settings, ["merge.head", "privacy.secure_aggregation"]) == "run-b (head=lda, secure_aggregation=true)"
    assert label("run-b", settings, []) == "run-b"
    styles = [style(i, 4) for i in range(4)]
    assert len({(s["ls"], s["marker"]) for s in styles}) == 4 == len(set(STYLES[:4]))
    # later runs are drawn thinner and on top, so that a line exactly on another still shows
    assert [s["lw"] for s in styles] == sorted((s["lw"] for s in styles), reverse=True)
    assert [s["zorder"] for s in styles] == sorted(s["zorder"] for s in styles)


def test_summary_settings_say_secure_aggregation_and_dp():
    from server.differences import summary_settings

    assert summary_settings({"scenario": "s", "merge": "exact", "secure_aggregation": True, "dp": False}) == {
        "name": "s", "merge.prototypes": "exact", "privacy.secure_aggregation": True, "privacy.dp": False}


def test_without_out_a_report_goes_where_a_run_does(tmp_path, monkeypatch, capsys):
    # Prepare
    from server.folders import default_out_dir

    run = fake_run(tmp_path / "a", 0.9, 100)
    monkeypatch.chdir(tmp_path)
    # Execute
    assert fedrecon(["report", str(run)]) == 0
    # Assert: runs/<name>-<time> under the working folder, for a report as for a run
    (folder,) = (tmp_path / "runs").iterdir()
    assert folder.name.startswith("report-") and (folder / "report.md").is_file()
    assert f"wrote {folder.relative_to(tmp_path)}/report.md" in capsys.readouterr().out
    assert default_out_dir("omniglot-quickstart").parent == default_out_dir("report").parent == Path("runs")


def test_a_site_run_is_reported_without_per_client_plots(tmp_path, capsys):
    """A site run has no plan of arrivals and the sites' counts are not per class: the table
    and the run-wide plots only, no empty per-client or forgetting figure."""
    run = fake_run(tmp_path / "sites-run", 0.92, 5000)
    (run / "plan.json").write_text(json.dumps({"rounds": 2, "clients": 3, "arrivals": []}))
    (run / "class_accuracy.jsonl").write_text("")
    out = tmp_path / "report"
    assert fedrecon(["report", str(run), "--out", str(out)]) == 0
    assert "| sites-run | 20 | 0.9000 |" in (out / "report.md").read_text()
    assert sorted(p.name for p in out.iterdir()) == ["accuracy.png", "bytes.png", "report.md"]
