"""The ``fedrecon`` command: run, deploy-local, certs, node-key, validate, plan, schema, report, merge and pretrain."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from pathlib import Path

from fedrecon.scenario import ScenarioError, key_table, load_scenario, schema_text
from fedrecon.scenario.loading import UNSET
from server.cli_deploy import cmd_certs, cmd_deploy_local, cmd_node_key
from server.cli_model import add_model_commands
from server.polling import POLL_INTERVAL

# Flower's environment for every process fedrecon starts (simulation, local deployments,
# tests): no telemetry or update check, no dependency install at run time (offline), and
# Ray's log lines as they are.
QUIET_FLOWER = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "RAY_DEDUP_LOGS": "0",
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
}


# `fedrecon run` starts Flower's simulation with run_simulation, which Flower 1.42 marks
# deprecated in favour of `flwr run` (README: both work): it hands Flower a ServerApp
# bound to the scenario this process already checked. That one warning is dropped;
# every other warning and DEPRECATED line of Flower still shows. What moving to `flwr run`
# costs, and the plan for the day run_simulation goes: docs/deployment.md;
# tests/test_flower_settings.py fails that day.
KNOWN_HARMLESS = ("DEPRECATED FEATURE: The `run_simulation` function is deprecated",)


def known_harmless(record: logging.LogRecord) -> bool:
    """A logging filter: False for the warnings listed in KNOWN_HARMLESS."""
    return not record.getMessage().startswith(KNOWN_HARMLESS)


def print_error(exc: BaseException, debug: bool) -> None:
    """An error as its one line (a scenario's: a line a problem) on stderr; with
    ``--debug`` as its traceback, the exceptions it was raised from (a plug-in's own) first."""
    if debug:
        traceback.print_exception(exc, file=sys.stderr)
    else:
        print(exc, file=sys.stderr)


def cmd_run(args) -> int:
    from flwr.simulation import run_simulation

    from clients.client_app import app as client_app
    from clients.setup import node_cache, weight_store
    from server.prepare import check_simulation_devices, prepare
    from server.folders import default_out_dir
    from server.server_app import make_app, resume_scenario

    if args.resume:
        if args.scenario or args.set or args.out:
            print("fedrecon: --resume takes the run folder's own scenario and folder; give no scenario, --set or --out", file=sys.stderr)
            return 2
        scenario = resume_scenario(args.resume)
    elif not args.scenario:
        print("fedrecon: run needs a scenario file (or --resume RUN_DIR)", file=sys.stderr)
        return 2
    else:
        scenario = load_scenario(args.scenario, args.set)
    check_simulation_devices(scenario)
    prep = prepare(scenario)
    sim = scenario.simulation
    if prep.entry.weights != "installed" and not sim.ray_address:
        # the virtual clients run on this machine: they find the weights where a node keeps
        # those it was sent, and say so when asked, instead of a copy in each one's first message
        weight_store(node_cache({})).put(prep.digest, prep.weights)
    out = Path(args.resume or args.out or default_out_dir(scenario.name))
    # sites: the classes are whatever the sites' folders hold
    what = f"{len(prep.plan.test_samples)} classes" if scenario.sites is None else "classes from the sites' folders"
    print(f"fedrecon: {scenario.name}: {prep.plan.clients} {'clients' if scenario.sites is None else 'sites'}, "
          f"{prep.plan.rounds} rounds, {what} -> {out}", flush=True)
    for warning in prep.plan.warnings:
        print(f"fedrecon: warning: {warning}", flush=True)
    for key, value in QUIET_FLOWER.items():
        os.environ.setdefault(key, value)
    if not args.verbose:
        flwr_logger = logging.getLogger("flwr")
        flwr_logger.setLevel(logging.WARNING)
        flwr_logger.addFilter(known_harmless)
    run_simulation(
        server_app=make_app(prep, out, resume=bool(args.resume)),
        client_app=client_app,
        num_supernodes=prep.plan.clients,
        backend_config={
            "client_resources": {"num_cpus": sim.num_cpus, "num_gpus": sim.num_gpus},
            "init_args": {"logging_level": "ERROR", "log_to_driver": True,
                          **({"address": sim.ray_address} if sim.ray_address else {})},
        },
    )
    if not (out / "summary.json").is_file():
        print(f"fedrecon: the run did not finish; see the log above (run folder {out})", file=sys.stderr)
        return 1
    return 0


def cmd_validate(args) -> int:
    """Every check ``fedrecon run`` makes before Flower starts (plug-ins, data, checkpoint,
    plan, this machine's devices), file by file. Not checked: the samples' contents (a run
    decodes them; validate reads no drawing), and a deployment's SuperNodes' devices."""
    from server.prepare import check, check_simulation_devices

    bad = 0
    for path in args.files:
        try:
            scenario = load_scenario(path, args.set)
            check_simulation_devices(scenario)
            plan = check(scenario).plan
        except ScenarioError as exc:
            print_error(exc, args.debug)
            bad += 1
        else:
            tasks = f"{len(plan.arrivals)} arrivals" if scenario.sites is None else "tasks as the sites' data arrives"
            print(f"{path}: ok ({plan.clients} {'clients' if scenario.sites is None else 'sites'}, {plan.rounds} rounds, "
                  f"{tasks})")
            for warning in plan.warnings:
                print(f"{path}: warning: {warning}")
    return 1 if bad else 0


def cmd_plan(args) -> int:
    from fedrecon.plan import GRID_CLIENTS, summary, timeline
    from server.prepare import check

    scenario = load_scenario(args.scenario, args.set)
    plan = check(scenario).plan
    if scenario.sites is not None:  # nothing is planned: each site's tasks are the data it gets
        print(f"{scenario.name}: {plan.clients} sites, {plan.rounds} rounds: no plan, each round every connected "
              "site learns what its folder holds and it has not learned (docs/sites.md)")
        return 0
    title = f"{scenario.name}: {plan.clients} clients, {plan.rounds} rounds, seed {scenario.seed}"
    if plan.clients > GRID_CLIENTS and not (args.clients or args.classes):
        print(summary(plan, title))
    else:
        print(timeline(plan, title, args.classes))
    return 0


def cmd_schema(args) -> int:
    print(key_table() if args.keys else schema_text(), end="")
    return 0


def cmd_pretrain(args) -> int:
    from fedrecon.backbones.pretrain import PretrainConfig, pretrain

    cfg = PretrainConfig(data_root=args.data_root, episodes=args.episodes, lr_halve_every=args.lr_halve_every,
                         seed=args.seed, device=args.device)
    pretrain(cfg, args.out)
    print(f"wrote {args.out}")
    return 0


def add_set(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                        help="override a key of the scenario, e.g. --set clients.count=8 (repeatable; the value is YAML)")
    # in the same list as --set, in the order given: a key can be removed, then set again
    parser.add_argument("--unset", action="append", dest="set", metavar="KEY.PATH", type=lambda key: UNSET + key,
                        help="remove a key the scenario file sets, e.g. --unset merge.metric (repeatable)")


def cmd_report(args) -> int:
    from server.compare import write_report
    from server.folders import default_out_dir

    try:
        write_report(args.runs, args.out or default_out_dir("report"))
    except FileNotFoundError as exc:
        print(f"fedrecon report: {exc}", file=sys.stderr)
        return 2
    return 0


def cmd_merge(args) -> int:
    from server.edge_runs import MergeError, merge_runs

    try:
        merge_runs(args.runs, args.out)
    except MergeError as exc:
        print(exc if str(exc).startswith("fedrecon merge") else f"fedrecon merge: {exc}", file=sys.stderr)
        return 2
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedrecon", description="Federated class-incremental learning on Flower.")
    parser.add_argument("--debug", action="store_true",
                        help="print an error's traceback, a plug-in's own included, not only its one line")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a scenario on Flower's simulation engine")
    run.add_argument("scenario", nargs="?", help="scenario YAML file")
    run.add_argument("--out", help="run folder (default: runs/<name>-<time>)")
    run.add_argument("--resume", metavar="RUN_DIR", help="continue a run folder after its last checkpoint")
    run.add_argument("--verbose", action="store_true", help="show Flower's own log lines")
    add_set(run)
    run.set_defaults(func=cmd_run)

    dep = sub.add_parser("deploy-local", help="run a scenario on a local SuperLink with one SuperNode per client")
    dep.add_argument("scenario", help="scenario YAML file")
    dep.add_argument("--out", help="run folder (default: runs/<name>-<time>)")
    dep.add_argument("--tls", action="store_true", help="HTTPS with a throw-away CA made for this run")
    dep.add_argument("--auth", action="store_true", help="SuperNode authentication with registered keys (implies --tls)")
    dep.add_argument("--workdir", help="folder for certificates, keys, FLWR_HOMEs and logs (default: a new temp folder)")
    dep.add_argument("--timeout", type=float, default=1800.0, help="seconds to wait for the run to finish")
    dep.add_argument("--poll-interval", type=float, default=POLL_INTERVAL, help="seconds between pulls for replies; 0: Flower's own (3 s)")
    dep.add_argument("--task-poll", type=float, default=0.1,
                     help="FLWR_SUPEREXEC_TASK_POLL_INTERVAL: seconds between a SuperExec's looks for work (Flower's default 1)")
    dep.add_argument("--gpus", metavar="0,1,...",
                     help="pin SuperNodes to GPUs: SuperNode k sees only GPU number k mod the list's length "
                          "(CUDA_VISIBLE_DEVICES); with model.device auto its clients use it")
    dep.add_argument("--cache-dir", help="every SuperNode's disk cache folder; 'none': off (default: one folder the local SuperNodes share, WORKDIR/node-cache)")
    add_set(dep)
    dep.set_defaults(func=cmd_deploy_local)

    crt = sub.add_parser("certs", help="make a CA and a SuperLink certificate for a deployment's host names")
    crt.add_argument("out", help="folder for ca.crt, server.pem and server.key (must not hold them yet)")
    crt.add_argument("--host", action="append", default=[], metavar="NAME",
                     help="a DNS name SuperNodes dial the SuperLink by (repeatable)")
    crt.add_argument("--ip", action="append", default=[], metavar="ADDRESS",
                     help="an IP address SuperNodes dial the SuperLink by (repeatable)")
    crt.add_argument("--days", type=float, default=365.0, help="how long the certificates are valid")
    crt.set_defaults(func=cmd_certs)

    key = sub.add_parser("node-key", help="make a SuperNode's key pair for SuperNode authentication")
    key.add_argument("path", help="private key file; the public key goes to PATH.pub")
    key.set_defaults(func=cmd_node_key)

    val = sub.add_parser("validate", help="check scenario files (their data, checkpoint, plan and this machine's devices) "
                                          "as fedrecon run does, without running them")
    val.add_argument("files", nargs="+")
    add_set(val)
    val.set_defaults(func=cmd_validate)

    pln = sub.add_parser("plan", help="print a scenario's timeline: round x client -> arriving classes")
    pln.add_argument("scenario", help="scenario YAML file")
    pln.add_argument("--classes", action="store_true", help="list class ids (* = revisit) instead of counts (the grid)")
    pln.add_argument("--clients", action="store_true",
                     help="the round x client grid at any size (past 40 clients a per-round summary is the default)")
    add_set(pln)
    pln.set_defaults(func=cmd_plan)

    sch = sub.add_parser("schema", help="print the JSON Schema of scenario files (docs/scenario.schema.json)")
    sch.add_argument("--keys", action="store_true", help="print the key reference table (markdown) instead")
    sch.set_defaults(func=cmd_schema)

    rep = sub.add_parser("report", help="compare run folders: table, report.md and plots")
    rep.add_argument("runs", nargs="+", help="run folders (each with summary.json)")
    rep.add_argument("--out", help="folder for report.md and its plots (default: runs/report-<time>)")
    rep.set_defaults(func=cmd_report)

    mrg = sub.add_parser("merge", help="add the statistics of edge runs (clients.edge) and score the sum")
    mrg.add_argument("runs", nargs="+", help="finished run folders, one per edge of one scenario")
    mrg.add_argument("--out", required=True, help="folder for the merged stats.npz, scenario.json and summary.json")
    mrg.set_defaults(func=cmd_merge)

    pre = sub.add_parser("pretrain", help="train the conv4 backbone on Omniglot's background set")
    pre.add_argument("--data-root", default="../shared/data", help="folder holding omniglot/")
    pre.add_argument("--out", default="checkpoints/conv4-omniglot.pt")
    pre.add_argument("--episodes", type=int, default=30000)
    pre.add_argument("--lr-halve-every", type=int, default=7500)
    pre.add_argument("--seed", type=int, default=0)
    pre.add_argument("--device", default="auto", help="auto, cpu or cuda")
    pre.set_defaults(func=cmd_pretrain)
    add_model_commands(sub)  # export, predict
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ScenarioError as exc:
        print_error(exc, args.debug)
        return 2


if __name__ == "__main__":
    sys.exit(main())
