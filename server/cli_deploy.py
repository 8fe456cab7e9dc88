"""The ``fedrecon`` commands that set up a deployment: deploy-local, certs, node-key."""

from __future__ import annotations

import sys
from pathlib import Path

from fedrecon.scenario import load_scenario


def cmd_deploy_local(args) -> int:
    """Run a scenario on Flower's deployment engine: a local SuperLink and SuperNodes.
    The scenario as checked here is written to the work folder (paths absolute, ``--set``
    applied, a data.root left out resolved from this working folder) and that file is what
    the SuperLink's ServerApp loads: its process has a working folder of its own."""
    import tempfile

    from fedrecon.scenario.loading import scenario_json
    from server.deploy import deploy_and_run
    from server.folders import default_out_dir
    from server.prepare import check

    scenario = load_scenario(args.scenario, args.set)
    check(scenario)  # a bad scenario or data never starts the SuperLink
    out = Path(args.out) if args.out else default_out_dir(scenario.name)
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="fedrecon-deploy-"))
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "scenario.json"
    path.write_text(scenario_json(scenario) + "\n")
    node_config = {"cache-dir": args.cache_dir} if args.cache_dir else {}
    gpus = tuple(g for g in args.gpus.split(",") if g) if args.gpus else ()
    status = deploy_and_run(path, out, workdir, scenario.clients.count, tls=args.tls or args.auth,
                            auth=args.auth, timeout=args.timeout, poll_interval=args.poll_interval,
                            node_config=node_config, task_poll=args.task_poll, gpus=gpus)
    print(f"fedrecon: run {status}; run folder {out}")
    return 0 if status == "finished:completed" else 1


def cmd_certs(args) -> int:
    """A CA and a SuperLink certificate for the names and addresses SuperNodes will dial."""
    from server.certs import make_certificates

    try:
        paths = make_certificates(Path(args.out), tuple(args.host), tuple(args.ip), args.days)
    except (FileExistsError, ValueError) as exc:
        print(f"fedrecon certs: {exc}", file=sys.stderr)
        return 2
    names = ", ".join([*args.host, *args.ip])
    print(f"fedrecon: {paths['ca']} (give to every SuperNode and the flwr CLI), {paths['cert']} and "
          f"{paths['key']} (SuperLink only), valid {args.days:g} days for {names}")
    return 0


def cmd_node_key(args) -> int:
    """A SuperNode's key pair: the private key stays on the node, the .pub is registered."""
    from server.certs import make_node_key

    try:
        private, public = make_node_key(Path(args.path))
    except FileExistsError as exc:
        print(f"fedrecon node-key: {exc}", file=sys.stderr)
        return 2
    print(f"fedrecon: {private} (the SuperNode's --auth-supernode-private-key), {public} (flwr supernode register)")
    return 0
