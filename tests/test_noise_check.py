"""privacy.dp before and after a run: the classes the noise drowns are named before it
starts, with an epsilon that keeps them; the epsilon spent and the noise are in its table."""

from __future__ import annotations

import math
import re

import pytest

from server.cli import main
from server.compare import Run, table
from server.noise_check import DROWNED, class_noise, drowning_warnings
from server.prepare import check
from server.report import RunRecorder
from strategies.budget import PrivacyBudget
from tests.conftest import scenario_of, small_scenario

pytest.importorskip("dp_accounting")


def test_validate_names_the_drowned_classes_and_an_epsilon_that_keeps_them(write_scenario, capsys):
    # 5 drawings a class, conv4's 64-d features clipped to 20: epsilon 8 drowns every class
    path = write_scenario(small_scenario(privacy={"dp": {"epsilon": 8.0, "clip": 20.0}}))
    assert main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert "privacy.dp: the noise drowns 12 of 12 classes" in out
    epsilon = float(re.search(r"privacy\.dp\.epsilon ([0-9.e+]+) would keep", out).group(1))
    assert epsilon > 8
    # the epsilon it names is enough, and a little less is not
    assert main(["validate", str(path), "--set", f"privacy.dp.epsilon={epsilon}"]) == 0
    assert "drowns" not in capsys.readouterr().out
    assert main(["validate", str(path), "--set", f"privacy.dp.epsilon={epsilon * 0.9}"]) == 0
    assert "drowns" in capsys.readouterr().out


def test_the_noise_on_a_class_is_the_noise_its_clients_add():
    scenario = scenario_of(privacy={"dp": {"epsilon": 4.0, "clip": 20.0}})
    plan = check(scenario).plan
    budget = PrivacyBudget(scenario, plan)
    ids, samples, std = class_noise(scenario, plan, budget)
    assert len(ids) == 12 and set(samples) == {5.0}
    # each class arrives once: the std one client adds (multiplier x sensitivity, sqrt(1 + clip^2))
    assert std == pytest.approx([budget.multiplier * math.sqrt(1 + 20.0**2)] * 12)
    # under secure aggregation each of the round's 3 clients adds 1/t of the variance (t = 2) to every class slot
    secure = scenario_of(privacy={"secure_aggregation": True, "dp": {"epsilon": 4.0, "clip": 20.0}})
    _, _, shared = class_noise(secure, plan, PrivacyBudget(secure, plan))
    assert shared == pytest.approx(std * math.sqrt(3 / 2))


def test_no_warning_where_the_classes_stand_above_the_noise():
    scenario = scenario_of(privacy={"dp": {"epsilon": 1e6, "clip": 20.0}})
    plan = check(scenario).plan
    assert drowning_warnings(scenario, plan, 64) == []
    budget = PrivacyBudget(scenario, plan)
    _, samples, std = class_noise(scenario, plan, budget)
    assert (std * 8 / samples < DROWNED * 20.0).all()


def test_the_table_and_the_report_show_the_epsilon_spent_and_the_noise(tmp_path):
    lines = []
    recorder = RunRecorder(tmp_path / "run", 2, lines.append)
    row = {"round": 1, "classes_seen": 4, "classes_learned": 4, "accuracy": 0.5, "bytes_up": 10, "bytes_down": 10,
           "epsilon": 3.5, "noise_std": 2.2, "seconds": 0.1}
    recorder.record(row)
    assert "epsilon  3.500" in lines[-1]
    summary = recorder.finish({"scenario": "s", "privacy_epsilon": 3.5, "privacy_epsilon_target": 8.0,
                               "privacy_delta": 1e-5, "noise_multiplier": 1.2, "noise_std": 2.2, "releases": 1})
    text = "\n".join(lines)
    assert "privacy epsilon spent" in text and "3.500 of 8" in text and "2.2 (noise multiplier 1.2" in text
    report = table([Run("dp", tmp_path / "run", summary, [row])])
    assert "epsilon" in report.splitlines()[0] and "noise std" in report.splitlines()[0]
    assert " 3.5 " in report.splitlines()[2] and " 2.2 " in report.splitlines()[2]
