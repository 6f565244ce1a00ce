"""`grr-coca`: the user-facing tools around the pipeline (the pipeline itself runs through `dvc repro`)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from pipeline.checks import exit_on_user_error
from pipeline.config import build_config, load_config, preset_names
from pipeline.names import DATASETS, EXPERIMENT


def cmd_config(args: argparse.Namespace) -> None:
    """Print the resolved configuration (preset + overrides) as the stages see it."""
    cfg = load_config(args.params) if args.preset is None else build_config({"preset": args.preset})
    print(json.dumps(cfg.to_dict(), indent=2))


def cmd_params(args: argparse.Namespace) -> None:
    """Trainable parameters of both encoders, per component, against the paper's totals."""
    from pipeline.model.params import format_param_report

    vit = {k: v for k, v in (("norm", args.vit_norm), ("ffn", args.vit_ffn), ("pos", args.vit_pos)) if v}
    cfg = build_config({"preset": args.preset, "model": {"vit": vit}} if vit else {"preset": args.preset})
    print(format_param_report(cfg.model))


def cmd_download(args: argparse.Namespace) -> None:
    """Re-download only the rows that failed, then rewrite the dataset's download report."""
    from pipeline.data.download import download_report, retry_failed
    from pipeline.io import write_json

    if not args.retry_failed:
        raise SystemExit("grr-coca download: the download itself runs with `dvc repro`; use --retry-failed here")
    cfg = load_config(args.params)
    paths = stage_options("download", args.dataset, args.dvc_yaml)
    out = args.out or paths["--out"]
    report = retry_failed(out, cfg.data.download) or download_report(out)
    write_json(args.report or paths["--report"], report)
    print(f"{args.dataset}: {report['success']}/{report['rows']} downloaded ({report['success_rate']:.1%})")


def stage_options(stage: str, item: str, dvc_yaml: str = "dvc.yaml") -> dict[str, str]:
    """The `--option value` pairs of a foreach stage's command in dvc.yaml, for one item: the paths
    live in dvc.yaml only, and the CLI reads them from there."""
    import shlex

    import yaml

    try:
        cmd = yaml.safe_load(open(dvc_yaml))["stages"][stage]["do"]["cmd"].replace("${item}", item)
    except (OSError, KeyError, TypeError) as e:
        raise SystemExit(f"grr-coca: cannot read stage {stage!r} from {dvc_yaml} ({type(e).__name__}: {e}); "
                         "run from the repository root or pass the paths") from None
    words = shlex.split(cmd)
    return {w: words[i + 1] for i, w in enumerate(words[:-1]) if w.startswith("--")}


def cmd_compare(args: argparse.Namespace) -> None:
    """GRR-CoCa against Baseline CoCa from MLflow: reports/comparison.md and validation curves"""
    from pipeline.report.compare import compare

    pins = {e: ids for e, ids in (("grr", args.grr), ("baseline", args.baseline)) if ids}
    try:
        md = compare(args.tracking_uri, args.out, pins or None, experiment=args.experiment, reference=args.reference)
    except (ValueError, RuntimeError) as e:
        raise SystemExit(f"grr-coca compare: {e}") from None
    report = json.loads((md.parent / "comparison.json").read_text())
    missing = sum(len(d["missing"]) for d in report["datasets"].values())
    print(f"wrote {md}" + (f" ({missing} run(s) missing: see the report)" if missing else ""))
    if not report["experiment_found"]:
        raise SystemExit(f"grr-coca compare: no experiment {args.experiment!r} at "
                         f"{args.tracking_uri or 'the default tracking store'}: nothing to compare (see {md})")


def cmd_tracking_sync(args: argparse.Namespace) -> None:
    """Send the MLflow records that stages kept on disk while the tracking server was down"""
    from pipeline.tracking import repo_root, spools, sync, tracking_uri

    uri = args.tracking_uri or tracking_uri(repo_root())
    folders = [Path(f) for f in args.spools] or spools(repo_root())
    if not folders:
        print("grr-coca tracking-sync: no spooled MLflow records (nothing under data/train_state/*/tracking)")
        return
    left_over = 0
    for folder in folders:
        try:
            sent, left = sync(folder, uri)
        except FileNotFoundError as e:
            raise SystemExit(f"grr-coca tracking-sync: {e}") from None
        except Exception as e:  # noqa: BLE001 - the server is still down: the records stay
            sent, left = 0, None
            print(f"{folder}: MLflow tracking at {uri} cannot be reached ({type(e).__name__}: {str(e)[:200]})")
        if left is not None:
            print(f"{folder}: {sent} record(s) sent to {uri}, {left} left")
        left_over += 1 if left is None or left else 0
    if left_over:
        raise SystemExit(f"grr-coca tracking-sync: {left_over} spool(s) still hold records; run it again later")


def resolve_checkpoint(args: argparse.Namespace) -> str:
    """--checkpoint as given, or --run's final checkpoint fetched from MLflow."""
    if args.checkpoint:
        return args.checkpoint
    import mlflow

    from pipeline.tracking import repo_root, sqlite_store, tracking_uri

    uri = args.tracking_uri or tracking_uri(repo_root())
    store = sqlite_store(uri)
    if store is not None and not store.is_file():  # MlflowClient would create an empty store there
        raise SystemExit(f"grr-coca: no MLflow store at {store} (run from the repository, or pass --tracking-uri)")
    try:
        return mlflow.MlflowClient(uri).download_artifacts(args.run, "checkpoints/final.pt")
    except Exception as e:  # noqa: BLE001 - unknown run, no artifact, unreachable store: one message
        raise SystemExit(f"grr-coca: cannot fetch checkpoints/final.pt of run {args.run} from {uri}: {e}") from None


def cmd_caption(args: argparse.Namespace) -> None:
    """Caption images with a trained checkpoint."""
    from pipeline.evaluate.inference import CheckpointError, caption_images, load_checkpoint, pick_device

    try:
        loaded = load_checkpoint(resolve_checkpoint(args), device=pick_device(args.device))
        images = loaded.load_images(args.images)
    except CheckpointError as e:
        raise SystemExit(f"grr-coca caption: {e}") from None
    print(f"grr-coca caption: {loaded.describe()}", file=sys.stderr)  # stdout stays path<TAB>caption
    options = {"min_length": args.min_length, "repetition_penalty": args.repetition_penalty,
               "max_length": args.max_length + 1 if args.max_length else None,  # generate counts BOS
               "temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p, "seed": args.seed}
    try:
        captions = caption_images(loaded, images, args.method, args.beams, **options)
    except ValueError as e:  # a value out of range (temperature 0, top-p 2, ...)
        raise SystemExit(f"grr-coca caption: {e}") from None
    for path, caption in zip(args.images, captions):
        print(f"{path}\t{caption}")


def cmd_classify(args: argparse.Namespace) -> None:
    """Zero-shot classification of images among labels you name (prompt templates averaged, CLIP-style)."""
    from pipeline.data.sources import SourceError
    from pipeline.evaluate.inference import CheckpointError, load_checkpoint, pick_device
    from pipeline.evaluate.zeroshot import classify_images, read_templates, templates_path

    labels = [label.strip() for label in args.labels.split(",") if label.strip()]
    if len(labels) < 2 or len(set(labels)) != len(labels):
        raise SystemExit(f"grr-coca classify: --labels needs two or more different comma-separated labels, got {args.labels!r}")
    try:
        templates = read_templates(templates_path(args.templates)) if args.templates else ["{}"]
        loaded = load_checkpoint(resolve_checkpoint(args), device=pick_device(args.device))
        images = loaded.load_images(args.images)
    except (CheckpointError, SourceError) as e:
        raise SystemExit(f"grr-coca classify: {e}") from None
    print(f"grr-coca classify: {loaded.describe()}; {len(templates)} template(s)", file=sys.stderr)
    probs = classify_images(loaded, images, labels, templates)
    for path, row in zip(args.images, probs):
        best = row.argsort(descending=True)[: args.top].tolist()
        print(f"{path}\t" + "\t".join(f"{labels[i]}\t{float(row[i]):.4f}" for i in best))


def cmd_retrieve(args: argparse.Namespace) -> None:
    """Rank the images of a folder by how well they match a text."""
    import torch

    from pipeline.evaluate.inference import CheckpointError, load_checkpoint, pick_device, rank_images

    paths = sorted(p for p in Path(args.images).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp"))
    try:
        loaded = load_checkpoint(resolve_checkpoint(args), device=pick_device(args.device))
    except CheckpointError as e:
        raise SystemExit(f"grr-coca retrieve: {e}") from None
    print(f"grr-coca retrieve: {loaded.describe()}", file=sys.stderr)
    readable = []
    for path in paths:  # one unreadable image is skipped, not the whole ranking
        try:
            readable.append((path, loaded.load_images([path])))
        except CheckpointError as e:
            print(f"grr-coca retrieve: skipped {e}", file=sys.stderr)
    if not readable:
        raise SystemExit(f"grr-coca retrieve: no readable .jpg/.jpeg/.png/.webp image in {args.images}")
    paths = [path for path, _ in readable]
    ranking = rank_images(loaded, torch.cat([images for _, images in readable]), args.query)
    for rank, (index, score) in enumerate(ranking[: args.top], 1):
        print(f"{rank}\t{score:.4f}\t{paths[index]}")


def add_model_source(p: argparse.ArgumentParser) -> None:
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="a final.pt or best.pt written by the pretrain or finetune stage")
    source.add_argument("--run", help="an MLflow run id: its checkpoints/final.pt artifact is used")
    p.add_argument("--tracking-uri", help="for --run (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: the GPU when there is one")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="grr-coca", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error, not one line")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("config", help=cmd_config.__doc__)
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--preset", choices=preset_names(), help="show a preset without params.yaml's overrides")
    p.set_defaults(func=cmd_config)

    p = sub.add_parser("params", help=cmd_params.__doc__)
    p.add_argument("--preset", default="paper", choices=preset_names())
    p.add_argument("--vit-norm", help="count a ViT design beside the two bundles: layernorm or rmsnorm")
    p.add_argument("--vit-ffn", help="gelu, geglu or swiglu")
    p.add_argument("--vit-pos", help="sincos, learned or rope2d")
    p.set_defaults(func=cmd_params)

    p = sub.add_parser("download", help=cmd_download.__doc__)
    p.add_argument("dataset", choices=DATASETS)
    p.add_argument("--retry-failed", action="store_true", help="re-download only the rows that failed")
    p.add_argument("--out", help="the download folder (default: the download stage's --out in dvc.yaml)")
    p.add_argument("--report", help="the report JSON (default: the download stage's --report in dvc.yaml)")
    p.add_argument("--dvc-yaml", default="dvc.yaml", help="where the stage paths are read from")
    p.add_argument("--params", default="params.yaml")
    p.set_defaults(func=cmd_download)

    p = sub.add_parser("compare", help=cmd_compare.__doc__)
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///<repo>/mlflow.db)")
    p.add_argument("--experiment", default=EXPERIMENT, help="MLflow experiment (default: %(default)s)")
    p.add_argument("--out", default="reports", help="output directory (default: %(default)s)")
    p.add_argument("--grr", action="append", default=[], metavar="RUN_ID",
                   help="pin a GRR-CoCa run by id (repeatable); a pre-training run also selects the fine-tuning "
                        "runs tagged pretrain_run_id=RUN_ID")
    p.add_argument("--baseline", action="append", default=[], metavar="RUN_ID",
                   help="pin a Baseline CoCa run by id (repeatable), as --grr")
    p.add_argument("--reference", default="baseline", metavar="DESIGN",
                   help="the ViT design every group's paired differences are taken against: baseline, grr or "
                        "<norm>-<ffn>-<pos>, e.g. rmsnorm-gelu-sincos (default: %(default)s)")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("tracking-sync", help=cmd_tracking_sync.__doc__)
    p.add_argument("spools", nargs="*", metavar="SPOOL",
                   help="spool folders (default: every data/train_state/*/tracking of this repository)")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///<repo>/mlflow.db)")
    p.set_defaults(func=cmd_tracking_sync)

    p = sub.add_parser("caption", help=cmd_caption.__doc__)
    p.add_argument("images", nargs="+")
    add_model_source(p)
    p.add_argument("--method", choices=["beam", "greedy", "sample"], default="beam")
    p.add_argument("--beams", type=int, default=3)
    p.add_argument("--temperature", type=float, default=1.0, help="sample: logits divided by it")
    p.add_argument("--top-k", type=int, default=0, help="sample: only the k likeliest tokens (0: all)")
    p.add_argument("--top-p", type=float, default=1.0, help="sample: nucleus, the likeliest tokens up to mass p")
    p.add_argument("--seed", type=int, default=0, help="sample: the same seed gives the same captions")
    p.add_argument("--min-length", type=int, default=0, help="tokens before a caption may end")
    p.add_argument("--max-length", type=int, default=0, help="tokens at most, end included (0: the model's limit)")
    p.add_argument("--repetition-penalty", type=float, default=1.0, help="> 1 discourages repeated tokens")
    p.set_defaults(func=cmd_caption)

    p = sub.add_parser("classify", help=cmd_classify.__doc__)
    p.add_argument("images", nargs="+")
    p.add_argument("--labels", required=True, help="comma-separated class names, e.g. 'red circle,blue square'")
    p.add_argument("--templates", help="prompt templates: a file (one per line, {} for the label) or a shipped "
                                       "set (imagenet, demo); default: the label alone")
    p.add_argument("--top", type=int, default=3, help="labels shown per image, best first")
    add_model_source(p)
    p.set_defaults(func=cmd_classify)

    p = sub.add_parser("retrieve", help=cmd_retrieve.__doc__)
    p.add_argument("--images", required=True, help="a folder of images")
    p.add_argument("--query", required=True)
    p.add_argument("--top", type=int, default=10)
    add_model_source(p)
    p.set_defaults(func=cmd_retrieve)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.debug:
        os.environ["GRR_COCA_DEBUG"] = "1"  # a user error shows its traceback too
    exit_on_user_error(lambda: args.func(args), prefix="grr-coca: error")


if __name__ == "__main__":
    main()
