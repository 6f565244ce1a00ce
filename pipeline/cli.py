"""`grr-coca`: the user-facing tools around the pipeline (the pipeline itself runs through `dvc repro`)."""

from __future__ import annotations

import argparse
import json
import sys

from pipeline.config import DATASETS, ConfigError, build_config, load_config, preset_names


def cmd_config(args: argparse.Namespace) -> None:
    """Print the resolved configuration (preset + overrides) as the stages see it."""
    cfg = load_config(args.params) if args.preset is None else build_config({"preset": args.preset})
    print(json.dumps(cfg.to_dict(), indent=2))


def cmd_params(args: argparse.Namespace) -> None:
    """Trainable parameters of both encoders, per component, against the paper's totals."""
    from pipeline.model.params import format_param_report

    cfg = build_config({"preset": args.preset})
    print(format_param_report(cfg.model))


def cmd_download(args: argparse.Namespace) -> None:
    """Re-download only the rows that failed, then rewrite the dataset's download report."""
    from pipeline.data.download import download_report, retry_failed
    from pipeline.io import write_json

    if not args.retry_failed:
        raise SystemExit("grr-coca download: the download itself runs with `dvc repro`; use --retry-failed here")
    cfg = load_config(args.params)
    out = f"data/download/{args.dataset}"
    retry_failed(out, cfg.data.download)
    report = download_report(out)
    write_json(f"metrics/download/{args.dataset}.json", report)
    print(f"{args.dataset}: {report['success']}/{report['rows']} downloaded ({report['success_rate']:.1%})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="grr-coca", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("config", help=cmd_config.__doc__)
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--preset", choices=preset_names(), help="show a preset without params.yaml's overrides")
    p.set_defaults(func=cmd_config)

    p = sub.add_parser("params", help=cmd_params.__doc__)
    p.add_argument("--preset", default="paper", choices=preset_names())
    p.set_defaults(func=cmd_params)

    p = sub.add_parser("download", help=cmd_download.__doc__)
    p.add_argument("dataset", choices=DATASETS)
    p.add_argument("--retry-failed", action="store_true", help="re-download only the rows that failed")
    p.add_argument("--params", default="params.yaml")
    p.set_defaults(func=cmd_download)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except ConfigError as e:
        print(f"grr-coca: configuration error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
