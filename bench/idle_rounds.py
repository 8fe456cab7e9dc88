"""What a round that learns nothing costs, next to one that learns, for every head.

HWU64 (MiniLM, Dirichlet split), 5 clients, 10 rounds: new intents arrive in rounds 1-6,
round 7 brings more sentences of two known intents, rounds 8-10 bring nothing. The server
scores every round; it builds the head and answers the test sentences again only when the
merged statistics changed (fedrecon/learning/head_cache.py), so a round that learns nothing
costs the round's bookkeeping and its checkpoint. One `fedrecon run` a head, each round's
seconds from metrics.jsonl and the scoring's from messages.jsonl; round 1 (Flower and Ray
starting) is left out. Writes the "idle-rounds" section of docs/benchmarks.md:

    .venv/bin/python bench/idle_rounds.py [--no-doc]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.docs import write_section  # noqa: E402
from bench.harness import fedrecon_run  # noqa: E402

SCENARIO = "scenarios/hwu64-dirichlet.yaml"
SETS = ["clients.count=5", "rounds=10"]
LEARNING, IDLE = range(2, 7), range(8, 11)  # rounds with new classes (after the first), rounds with nothing
HEADS = ("ncm", "lda", "ridge")
HEADER = ("| head | round that learns: s (scoring s) | round that learns nothing: s (scoring s) | nothing / learns | "
          "checkpoint s | final acc |", "|---|---|---|---|---|---|")


def scoring_seconds(out: Path) -> dict[int, float]:
    """The server's scoring seconds by round (messages.jsonl)."""
    lines = [json.loads(line) for line in (out / "messages.jsonl").read_text().splitlines() if line.strip()]
    return {x["round"]: x["server_s"] for x in lines if x.get("phase") == "scoring"}


def checkpoint_seconds(out: Path) -> float:
    """What writing the run's last checkpoint again costs (a round's checkpoint is written after
    its seconds are taken, learning or not)."""
    from server.checkpoint import load_run_state, save_run_state

    done, stats, state = load_run_state(out)
    began = time.perf_counter()
    save_run_state(out, done, stats, state)
    return time.perf_counter() - began


def section(lines: list[str]) -> str:
    """The docs/benchmarks.md section around the table's lines."""
    return f"""## Rounds that learn nothing

Command: `.venv/bin/python bench/idle_rounds.py` (`fedrecon run {SCENARIO} --set {' --set '.join(SETS)}
--set merge.head=HEAD`, one run a head, in one invocation). New intents arrive in rounds 1-6, round 7
brings more sentences of two known ones, rounds 8-10 bring nothing. Medians of rounds 2-6 (round 1
starts Flower and Ray) and of rounds 8-10; in brackets the server's scoring. The server builds the head
and answers a test sentence again only when the merged statistics changed (the same object, else equal
ids, counts and digest of every array: `fedrecon/learning/head_cache.py`), so the same accuracies come
out; a round that learns nothing costs its bookkeeping. Every round then writes its checkpoint (the
ridge head's 4,000 x 4,000 Gram too) after its seconds are taken: "checkpoint s" is what writing the
last one again costs. Before, the ridge head solved its Gram's Cholesky and scored every sentence each
round (about 9 s a round on this machine, whatever the round learned).

{chr(10).join(lines)}"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-doc", action="store_true")
    args = parser.parse_args()
    lines = list(HEADER)
    with tempfile.TemporaryDirectory() as tmp:
        for head in HEADS:
            out = Path(tmp) / head
            summary, rows = fedrecon_run(SCENARIO, [*SETS, f"merge.head={head}"], out)
            seconds = {r["round"]: r["seconds"] for r in rows}
            scoring = scoring_seconds(out)
            learn, idle = (statistics.median(seconds[r] for r in rounds) for rounds in (LEARNING, IDLE))
            learn_s, idle_s = (statistics.median(scoring[r] for r in rounds) for rounds in (LEARNING, IDLE))
            assert all(r["accuracy"] == rows[6]["accuracy"] for r in rows[7:]), "an idle round changed the accuracy"
            lines.append(f"| {head} | {learn:.2f} ({learn_s:.2f}) | {idle:.3f} ({idle_s:.3f}) | {idle / learn:.4f} | "
                         f"{checkpoint_seconds(out):.2f} | {summary['final_accuracy']:.4f} |")
            print(lines[-1], flush=True)
    if not args.no_doc:
        write_section("idle-rounds", section(lines))


if __name__ == "__main__":
    main()
