"""dvc.yaml declares, for each stage, exactly the code that the stage runs.

DVC reruns a stage when one of its deps changes, so code deps must be neither coarser nor finer
than the imports: a change to beam search (pipeline/model/generate.py) must rerun every evaluate
stage, and a cosmetic edit to the report or the CLI must not rerun a day of training. Each stage
depends on its script and on exactly the pipeline/ files that the script imports, transitively
(found here with `ast`, never by importing), listed file by file, not as directories. Package
`__init__.py` files import nothing (checked below), so they are left out of the lists. Stage scripts
take their paths from dvc.yaml only, so that dvc.yaml is the one place where the graph is written.
"""

from __future__ import annotations

import ast
import functools
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())
SCRIPTS = sorted((ROOT / "stages").glob("*.py"))


def _module_file(name: str) -> Path | None:
    """pipeline/a/b.py or pipeline/a/b/__init__.py for the module `pipeline.a.b`, if there is one."""
    base = ROOT.joinpath(*name.split("."))
    return next((p for p in (base.with_suffix(".py"), base / "__init__.py") if p.is_file()), None)


def _imported_modules(path: Path) -> set[str]:
    """Modules that `path` imports anywhere (functions included), except under `if TYPE_CHECKING:`."""
    rel = path.relative_to(ROOT).with_suffix("").parts
    package = rel[:-1]  # where a relative import starts, for pipeline/a/b.py and pipeline/a/__init__.py alike
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and re.fullmatch(r"(typing\.)?TYPE_CHECKING", ast.unparse(node.test)):
            for child in node.orelse:  # only the `else:` branch runs
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = ".".join((package[: len(package) - node.level + 1] if node.level else ()) + (
                (node.module,) if node.module else ()))
            found.add(base)  # `from pkg import name`: name is a submodule or an attribute of pkg
            found.update(f"{base}.{alias.name}" for alias in node.names if _module_file(f"{base}.{alias.name}"))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), filename=str(path)))
    # Importing pipeline.a.b also runs pipeline/__init__.py and pipeline/a/__init__.py.
    return {".".join(m.split(".")[:i]) for m in found if m.split(".")[0] == "pipeline"
            for i in range(1, m.count(".") + 2)}


def pipeline_imports(script: Path) -> set[str]:
    """Repo-relative paths of the pipeline/ files that `script` imports, transitively, less __init__.py."""
    seen: set[Path] = set()
    todo = [script]
    while todo:
        for module in _imported_modules(todo.pop()):
            file = _module_file(module)
            if file is not None and file not in seen:
                seen.add(file)
                todo.append(file)
    return {p.relative_to(ROOT).as_posix() for p in seen if p.name != "__init__.py"}


VAR = re.compile(r"\$\{\s*([\w.-]+)\s*\}")


def _substitute(value, context: dict):
    """DVC's `${var}`, `${item.field}`, `${key}` interpolation; a lone `${...}` keeps its type (a list)."""
    if isinstance(value, dict):
        return {k: _substitute(v, context) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, context) for v in value]
    if not isinstance(value, str):
        return value
    resolve = lambda name: functools.reduce(lambda found, part: found[part], name.split("."), context)  # noqa: E731
    whole = VAR.fullmatch(value)
    return resolve(whole[1]) if whole else VAR.sub(lambda m: str(resolve(m[1])), value)


def _stages() -> dict[str, dict]:
    """Every stage of dvc.yaml, `foreach` expanded (`name@item`), its cmd and deps interpolated."""
    context = yaml.safe_load((ROOT / "params.yaml").read_text()) or {}  # DVC's default vars
    for entry in DVC.get("vars", []):
        context.update(entry if isinstance(entry, dict) else yaml.safe_load((ROOT / entry).read_text()))
    stages = {}
    for name, stage in DVC["stages"].items():
        if "foreach" not in stage:
            stages[name] = _substitute({k: stage[k] for k in ("cmd", "deps") if k in stage}, context)
            continue
        items = _substitute(stage["foreach"], context)
        pairs = items.items() if isinstance(items, dict) else ((item, item) for item in items)
        for key, item in pairs:
            body = {k: stage["do"][k] for k in ("cmd", "deps") if k in stage["do"]}
            stages[f"{name}@{key}"] = _substitute(body, {**context, "item": item, "key": key})
    return stages


STAGES = _stages()


def _script(stage: dict) -> str:
    scripts = re.findall(r"\bstages/\w+\.py\b", stage["cmd"])
    assert len(scripts) == 1, f"cmd should run one stages/*.py script: {stage['cmd']!r}"
    return scripts[0]


@pytest.mark.parametrize("name", STAGES)
def test_stage_code_deps_are_exactly_its_imports(name):
    stage = STAGES[name]
    script = _script(stage)
    deps = [d if isinstance(d, str) else next(iter(d)) for d in stage.get("deps", [])]
    code = {d.rstrip("/") for d in deps if d.startswith(("stages/", "pipeline/")) and Path(d).suffix in ("", ".py")}
    directories = sorted(d for d in code if (ROOT / d).is_dir())
    expected = {script} | pipeline_imports(ROOT / script)
    missing, extra = sorted(expected - code), sorted(code - expected - set(directories))
    assert not (directories or missing or extra), (
        f"stage {name} ({script}): deps should be the script and the pipeline/ files it imports\n"
        f"  missing: {missing}\n  extra (not imported): {extra}\n"
        f"  directories (list files, not directories): {directories}")


def test_package_inits_import_nothing():
    """What makes leaving __init__.py out sound: importing a module runs its package's __init__.py."""
    offenders = [f"{p.relative_to(ROOT)}:{node.lineno}" for p in sorted((ROOT / "pipeline").rglob("__init__.py"))
                 for node in ast.walk(ast.parse(p.read_text()))
                 if isinstance(node, (ast.Import, ast.ImportFrom))
                 and not (isinstance(node, ast.ImportFrom) and node.module == "__future__")]
    assert not offenders, f"__init__.py files should import nothing (import from the module itself): {offenders}"


def test_dataset_lists_match_the_library():
    from pipeline import names

    datasets = next(v["datasets"] for v in DVC["vars"] if isinstance(v, dict) and "datasets" in v)
    assert tuple(datasets) == names.DATASETS
    assert tuple(DVC["stages"]["finetune"]["foreach"]) == names.FINETUNE_DATASETS
    joint = [f"{names.JOINT}-{d}" for d in names.FINETUNE_DATASETS]  # the joint model on each set
    assert set(DVC["stages"]["evaluate"]["foreach"]) == {"pretrain", *names.FINETUNE_DATASETS, *joint}
    cmd = DVC["stages"]["finetune_joint"]["cmd"]
    for d in names.FINETUNE_DATASETS:  # the joint fine-tune mixes every fine-tuning set
        assert f"{d}=data/shards/{d}/train" in cmd and f"{d}=data/shards/{d}/val" in cmd, d


def _leading_text(node: ast.AST) -> str | None:
    """The text of a string literal, or the literal start of an f-string."""
    if isinstance(node, ast.JoinedStr) and node.values:
        node = node.values[0]
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _path_defaults(file: Path, looks_like_path) -> list[str]:
    """`file:line option default` for each add_argument(default=<path>) or `args.x or <path>` fallback."""
    found = []
    for node in ast.walk(ast.parse(file.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument":
            option = getattr(node.args[0], "value", "?") if node.args else "?"
            defaults = [kw.value for kw in node.keywords if kw.arg == "default"]
        elif isinstance(node, ast.BoolOp) and isinstance(node.op, ast.Or):
            option, defaults = ast.unparse(node.values[0]), node.values[1:]
        else:
            continue
        for value in filter(None, map(_leading_text, defaults)):
            if looks_like_path(value) and (option, value) != ("--params", "params.yaml"):
                found.append(f"{file.relative_to(ROOT)}:{node.lineno} {option} default {value!r}")
    return found


def test_stage_scripts_take_paths_from_dvc_yaml():
    suffixes = (".json", ".tsv", ".pt", ".npy", ".parquet", ".md")
    found = [d for s in SCRIPTS for d in _path_defaults(s, lambda v: "/" in v or v.endswith(suffixes))]
    found += _path_defaults(ROOT / "pipeline" / "cli.py", lambda v: v.startswith(("data/", "metrics/")))
    assert not found, "paths belong in dvc.yaml only; drop these defaults (make the options required):\n  " + (
        "\n  ".join(found))


def test_every_stage_script_is_used():
    used = {_script(stage) for stage in STAGES.values()}
    unused = [s.relative_to(ROOT).as_posix() for s in SCRIPTS if s.relative_to(ROOT).as_posix() not in used]
    assert not unused, f"stages/ scripts that no dvc.yaml stage runs: {unused}"


def test_the_committed_dvc_lock_records_this_code():
    """dvc.lock is committed (DVC's convention) so that queued experiments start from it and skip the
    data stages. It must record the code in the tree: a stale entry would rerun a stage in every queued
    experiment. After changing a stage's code, run `make demo` and commit dvc.lock and metrics/."""
    import hashlib

    lock = yaml.safe_load((ROOT / "dvc.lock").read_text())["stages"]
    stale = []
    for stage, entry in lock.items():
        for dep in entry.get("deps", []):
            path = ROOT / dep["path"]
            if dep["path"].endswith(".py") and hashlib.md5(path.read_bytes()).hexdigest() != dep["md5"]:
                stale.append(f"{stage}: {dep['path']}")
    assert not stale, "dvc.lock is stale (run `make demo`, commit dvc.lock and metrics/): " + ", ".join(stale)
    listed = subprocess.run([sys.executable, "-m", "dvc", "stage", "list", "--name-only"], cwd=ROOT, capture_output=True, text=True,
                            check=True, timeout=120).stdout.split()
    assert sorted(lock) == sorted(listed)  # every stage of dvc.yaml, each item of a foreach
