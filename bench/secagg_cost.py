"""What secure aggregation costs: messages, bytes and seconds a round, with and without it.

Simulation (`fedrecon run`, Flower's simulation engine, 2 clients at a time on 2 cores):
N clients each learn one new Omniglot character a round from 5 drawings, for 3 rounds, on
conv4 (the quickstart scenario with `--set`s). Deployment: the same with 3 SuperNodes on
loopback (`server.deploy.LocalDeployment`). Per round: the median over rounds 2-3 (round 1
holds Ray's start and the setup); messages each way (identify queries apart) and bytes.
Both runs must end with the same statistics (checked). Writes the "secagg" section of
docs/benchmarks.md:

    .venv/bin/python bench/secagg_cost.py [--clients 5 20 100] [--no-deploy] [--no-doc]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.docs import write_section  # noqa: E402
from bench.harness import fedrecon_run  # noqa: E402

SCENARIO = "scenarios/omniglot-quickstart.yaml"


def overrides(clients: int) -> list[str]:
    return [f"clients.count={clients}", f"tasks.num_classes={3 * clients}", "tasks.classes_per_task=1",
            "tasks.train_shots=5", "tasks.test_shots=5", "faults.reply_timeout=300"]


def per_round(rows: list[dict]) -> dict:
    later = [r for r in rows if r["round"] > 1] or rows
    return {k: statistics.median(r[k] for r in later) for k in ("seconds", "messages_down", "messages_up", "bytes_down",
                                                                "bytes_up")}


def same_statistics(a: Path, b: Path) -> bool:
    x, y = np.load(a / "stats.npz"), np.load(b / "stats.npz")
    return np.array_equal(x["ids"], y["ids"]) and np.allclose(x["sums"], y["sums"], rtol=1e-9, atol=0)


def simulation(clients: int, out: Path) -> dict:
    result = {}
    for mode, extra in (("plain", []), ("secure", ["privacy.secure_aggregation=true"])):
        summary, rows = fedrecon_run(SCENARIO, [*overrides(clients), *extra], out / f"sim-{clients}-{mode}")
        result[mode] = {**per_round(rows), "final_accuracy": summary["final_accuracy"]}
    result["same"] = same_statistics(out / f"sim-{clients}-plain", out / f"sim-{clients}-secure")
    return result


def deployment(out: Path) -> dict:
    import yaml

    from fedrecon.scenario import load_scenario, scenario_json
    from server.deploy import LocalDeployment

    result = {}
    for mode, extra in (("plain", []), ("secure", ["privacy.secure_aggregation=true"])):
        scenario = load_scenario(REPO / SCENARIO, [*overrides(3), *extra])
        path = out / f"deploy-{mode}.yaml"
        path.write_text(yaml.safe_dump(json.loads(scenario_json(scenario))))
        run_dir = out / f"deploy-{mode}"
        with LocalDeployment(out / f"work-{mode}", 3) as deployment:
            status = deployment.wait(deployment.submit({"scenario": str(path), "out": str(run_dir)}), 900)
        if status != "finished:completed":
            raise SystemExit(f"deployment run {mode} ended {status}; logs in {out / f'work-{mode}'}")
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        result[mode] = {**per_round(rows), "final_accuracy": json.loads((run_dir / "summary.json").read_text())["final_accuracy"]}
    result["same"] = same_statistics(out / "deploy-plain", out / "deploy-secure")
    return result


def table(results: dict[str, dict]) -> str:
    lines = ["| engine | clients | run | s / round | messages down / up | bytes down / round | bytes up / round | final acc | same statistics |",
             "|---|---|---|---|---|---|---|---|---|"]
    for label, r in results.items():
        engine, clients = label.split(":")
        for mode in ("plain", "secure"):
            m = r[mode]
            lines.append(f"| {engine} | {clients} | {mode} | {m['seconds']:.2f} | {m['messages_down']:.0f} / {m['messages_up']:.0f} | "
                         f"{m['bytes_down']:,.0f} | {m['bytes_up']:,.0f} | {m['final_accuracy']:.4f} | "
                         f"{'yes' if r['same'] else 'NO'} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="*", default=[5, 20, 100])
    parser.add_argument("--no-deploy", action="store_true")
    parser.add_argument("--no-doc", action="store_true")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.clients:
            results[f"simulation:{n}"] = simulation(n, Path(tmp))
            print(json.dumps({n: results[f"simulation:{n}"]}), flush=True)
        if not args.no_deploy:
            results["deployment:3"] = deployment(Path(tmp))
            print(json.dumps({"deploy": results["deployment:3"]}), flush=True)
    text = f"""## Secure aggregation: what it costs

Command: `.venv/bin/python bench/secagg_cost.py` (N clients, each learning one Omniglot
character a round from 5 drawings, 3 rounds, conv4; `privacy.secure_aggregation: true`
against the same run without; medians over rounds 2-3; messages are the round's task,
key, share and unmask messages, identify queries apart). A secure round is four exchanges
instead of one: keys, encrypted shares, the masked statistics (16 bytes a value, every
client's vector as long as the round's layout: all the round's classes), the unmasking
shares. "same statistics": the merged statistics of the two runs agree to 1e-9 relative.

{table(results)}
"""
    print(text)
    if not args.no_doc:
        print(f"wrote {write_section('secagg', text)}")


if __name__ == "__main__":
    main()
