"""DVC stage `download@<dataset>`: the dataset's URL list through img2dataset into webdataset tars.

The output folder is persisted (`persist: true`) and img2dataset runs in incremental mode, so an
interrupted download resumes where it stopped. The report counts every row by final status.
`--retry-failed` re-downloads only the rows that failed (also `grr-coca download --retry-failed`).
"""

import argparse
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's pipeline/, also inside `dvc exp run` copies

from pipeline.checks import exit_on_user_error  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.names import DATASETS  # noqa: E402
from pipeline.data.download import download, download_report, retry_failed  # noqa: E402
from pipeline.data.sources import source_chunks  # noqa: E402
from pipeline.io import write_json  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("dataset", choices=DATASETS)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", required=True, help="download folder, e.g. data/download/cc12m")
    parser.add_argument("--report", required=True, help="metrics JSON, e.g. metrics/download/cc12m.json")
    parser.add_argument("--retry-failed", action="store_true", help="only re-download the failed rows")
    args = parser.parse_args()

    cfg = load_config(args.params)
    out = Path(args.out)
    if args.retry_failed:
        report = retry_failed(out, cfg.data.download) or download_report(out)
    else:
        refused = Counter()  # filled while the list streams in
        urls = source_chunks(args.dataset, cfg.data.sources, refused)
        report = download(args.dataset, urls, out, cfg.data.download, refused=refused)
    write_json(args.report, report)
    print(f"{args.dataset}: {report['success']}/{report['rows']} downloaded ({report['success_rate']:.1%})")


if __name__ == "__main__":
    exit_on_user_error(main)  # a bad value or a missing file: one line, no traceback
