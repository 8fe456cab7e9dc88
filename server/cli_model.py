"""``fedrecon export`` and ``fedrecon predict``: the federated model out of its run, and used.

Registered in :func:`server.cli.build_parser` by :func:`add_model_commands`. Every
problem (a run folder without a checkpoint, a model folder altered, an input that is no
image) is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys

from fedrecon.model.folder import ModelError


def cmd_export(args) -> int:
    from fedrecon.model.onnx_export import export_as
    from server.model_export import export_run

    try:
        manifest = export_as(args.format, lambda out: export_run(args.run_dir, out, args.round, args.unknown_threshold),
                             args.out)
    except ModelError as exc:
        print(f"fedrecon export: {exc}", file=sys.stderr)
        return 2
    accuracy = manifest["accuracy"]
    shown = "not scored" if accuracy is None else f"{accuracy:.4f}"
    print(f"fedrecon export: {manifest['scenario']} round {manifest['round']}: {len(manifest['classes'])} classes, "
          f"{manifest['head']['kind']} head on {manifest['backbone']['name']}, accuracy in the run {shown}, "
          f"{_threshold(manifest['unknown'])} -> {args.out}" + (" (onnx)" if args.format == "onnx" else ""))
    return 0


def _threshold(unknown: dict) -> str:
    """The shipped unknown threshold in words."""
    threshold = unknown.get("threshold")
    if threshold is None:
        return f"no unknown threshold ({unknown['why']})" if unknown.get("why") else "no unknown threshold"
    if unknown.get("chosen_by") == "federation":
        partial = "" if unknown.get("complete", True) else ", not every client counted"
        return f"unknown above {threshold:.4g} (the federation's, {unknown['quantile']:.0%} of training samples kept{partial})"
    return f"unknown above {threshold:.4g}"


def _inputs(args, modality: str) -> list[str]:
    """The inputs in order: arguments, then the file's lines; standard input when neither."""
    items = list(args.inputs)
    if args.file:
        try:
            with open(args.file, encoding="utf-8") as f:
                items += [line.rstrip("\n") for line in f if line.strip()]
        except (OSError, UnicodeDecodeError) as exc:
            raise ModelError(f"--file {args.file}: cannot be read as text ({exc})") from None
    if not items and not args.file and not sys.stdin.isatty():
        items = [line.rstrip("\n") for line in sys.stdin if line.strip()]
    if not items:
        what = "sentences" if modality == "text" else "image files or folders"
        raise ModelError(f"no input: give {what} as arguments, --file FILE, or one a line on standard input")
    return items


def _line(p: dict) -> str:
    others = ", ".join(f"{t['label']} {t['score']:.4g}" for t in p["top"][1:])
    unknown = "" if p["unknown_score"] is None else f"\tunknown score {p['unknown_score']:.4g}"
    return f"{p['input']}\t{p['label']}\t{p['score']:.4g}" + (f"\t({others})" if others else "") + unknown


def cmd_predict(args) -> int:
    from fedrecon.model import load_model

    try:
        model = load_model(args.model_dir, args.device)
        predictions = model.predict(_inputs(args, model.modality), top=args.top, unknown_threshold=args.unknown_threshold)
    except ModelError as exc:
        print(f"fedrecon predict: {exc}", file=sys.stderr)
        return 2
    for p in predictions:
        print(json.dumps({k: p[k] for k in ("input", "label", "score", "unknown_score", "top")}) if args.json else _line(p))
    return 0


def _options_among_inputs(parser: argparse.ArgumentParser) -> None:
    """Let options sit between the inputs (``predict MODEL --top 3 a.png b.png``): plain
    argparse fills a ``*`` positional before the first option and refuses what follows.
    Intermixed parsing calls ``parse_known_args`` itself, hence the plain one inside it."""
    plain = parser.parse_known_args

    def parse(args=None, namespace=None):
        parser.parse_known_args = plain
        try:
            return parser.parse_known_intermixed_args(args, namespace)
        finally:
            parser.parse_known_args = parse

    parser.parse_known_args = parse


def add_model_commands(sub: argparse._SubParsersAction) -> None:
    """Add ``export`` and ``predict`` to the ``fedrecon`` command's subcommands."""
    exp = sub.add_parser("export", help="write a run's classifier as a model folder that loads without the run")
    exp.add_argument("run_dir", help="a run folder (fedrecon run --out)")
    exp.add_argument("--out", required=True, help="the model folder to write (replaced if an earlier export)")
    exp.add_argument("--round", type=int, help="the round to export (default: the last); earlier ones as the scenario's checkpoints.keep kept them")
    exp.add_argument("--unknown-threshold", type=float, metavar="T",
                     help="label unknown the inputs whose unknown-input score is above T (default: the threshold the "
                     "run chose from the clients' training scores, unknown.quantile)")
    exp.add_argument("--format", choices=["safetensors", "onnx"], default="safetensors",
                     help="safetensors (the default; runs in torch) or onnx: one model.onnx graph that runs on "
                     "onnxruntime alone (pip install 'fedrecon[onnx]')")
    exp.set_defaults(func=cmd_export)

    pre = sub.add_parser("predict", help="label sentences or images with an exported model")
    pre.add_argument("model_dir", help="a model folder (fedrecon export --out)")
    pre.add_argument("inputs", nargs="*", help="sentences (a text model) or image files and folders (an image model)")
    pre.add_argument("--file", help="inputs one a line (sentences, or image paths)")
    pre.add_argument("--top", type=int, default=3, help="how many of the best classes to list (default 3)")
    pre.add_argument("--json", action="store_true", help="one JSON object a line, in input order: label, score, unknown_score, top")
    pre.add_argument("--device", default="cpu", help="where the backbone runs: cpu or cuda")
    pre.add_argument("--unknown-threshold", type=float, metavar="T", help="label unknown above this unknown-input score "
                     "(default: the export's threshold, if it set one)")
    pre.set_defaults(func=cmd_predict)
    _options_among_inputs(pre)
