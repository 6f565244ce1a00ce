"""The caption-samples table the evaluation stage writes (`data/eval/<name>-captions.md`, also an MLflow
artifact) and the report reads back: one format, written and parsed here. Imports nothing heavy."""

from __future__ import annotations

import re

HEADER = ("| image | generated | references |", "| --- | --- | --- |")


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def samples_markdown(title: str, samples: list[dict]) -> str:
    """`samples`: dicts with image_id, generated, references (a list), as `evaluate()` returns them."""
    lines = [f"# {title}", "", *HEADER]
    for s in samples:
        refs = "<br>".join(_cell(r) for r in s["references"])
        lines.append(f"| {s['image_id']} | {_cell(s['generated'])} | {refs} |")
    return "\n".join(lines) + "\n"


def read_samples_markdown(text: str) -> dict[str, dict]:
    """The inverse of `samples_markdown`: {image_id: {"generated", "references"}}."""
    samples = {}
    for line in text.splitlines()[len(HEADER) + 2:]:  # title, blank line, header
        cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        if len(cells) == 3:
            samples[cells[0]] = {"generated": cells[1], "references": cells[2].split("<br>")}
    return samples
