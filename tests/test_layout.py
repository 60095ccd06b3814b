"""The house keeps its floors: the README's layering sentence is the one the imports show (every
import, at the top of a module or inside a function, points to a lower floor), the command line
is imported only by the scripts and the grid, every subpackage says what it holds, and no function
or module outgrows one screen's reading."""
from __future__ import annotations

import ast
import json
import os

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = ("get_loss_values", "compute_cld_scores", "train_on_coresets", "reproduce_table")
# Top to bottom; a unit imports only units of lower floors (and itself).
FLOORS = (
    ("scripts",),
    ("grid",),
    ("cli", "api.py"),
    ("collect", "scoring", "coreset_training"),
    ("methods",),
    ("train",),
    ("data", "core"),
    ("files", "models/"),
    ("paths.py", "progress.py"),
    ("errors.py", "cpu_kernels.py", "cld_recorder.py"),
)
EXAMPLE_METHOD = "utils/methods/last_loss.py"  # docs/methods.md's example, the one file a reader creates
MAX_FUNCTION_LINES = 80
MAX_MODULE_LINES = 450


def layering_sentence() -> str:
    """The README's sentence, written from :data:`FLOORS`."""
    def unit(name: str) -> str:
        return "the scripts" if name == "scripts" else f"`{name}`"
    return "Dependencies point one way, down: " + " → ".join(", ".join(unit(u) for u in floor) for floor in FLOORS) + "."


def _unit(module: str) -> str | None:
    """The floor unit of a dotted module name of the project (None: not the project's)."""
    parts = module.split(".")
    if parts[0] in SCRIPTS:
        return "scripts"
    if parts[0] == "models":
        return "models/"
    if parts[0] == "cld_recorder":
        return "cld_recorder.py"
    if parts[0] != "utils" or len(parts) == 1 or parts[1] == "__init__":
        return None
    if os.path.isdir(os.path.join(REPO, "utils", parts[1])):
        return parts[1]
    return parts[1] + ".py"


def _imports(path: str) -> list[tuple[str, int]]:
    """Every project module ``path`` imports, anywhere in it, with the line."""
    tree = ast.parse(open(path, encoding="utf-8").read())
    package = os.path.relpath(os.path.dirname(path), REPO).replace(os.sep, ".")
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the file's package
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            out += [(f"{base}.{alias.name}", node.lineno) for alias in node.names]
    return out


def _project_files() -> list[str]:
    files = [os.path.join(REPO, f"{s}.py") for s in (*SCRIPTS, "cld_recorder")]
    for top in ("utils", "models"):
        for folder, _, names in os.walk(os.path.join(REPO, top)):
            files += [os.path.join(folder, n) for n in names if n.endswith(".py")]
    return files


def _edges(files: list[str] | None = None, unit_of=None) -> list[tuple[str, str, str]]:
    """(importing unit, imported unit, where) for every import between two project units."""
    edges = []
    for path in _project_files() if files is None else files:
        rel = os.path.relpath(path, REPO)
        src = (unit_of or _unit)(rel[:-3].replace(os.sep, ".").removesuffix(".__init__"))
        for module, line in _imports(path):
            dst = _unit(module)
            if dst is not None and dst != src:
                edges.append((src, dst, f"{rel}:{line} imports {module}"))
    return edges


def test_the_readme_states_the_layering_that_the_imports_show():
    readme = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()
    assert layering_sentence() in " ".join(readme.split()), layering_sentence()
    floor = {unit: i for i, units in enumerate(FLOORS) for unit in units}
    units = {_unit(os.path.relpath(p, REPO)[:-3].replace(os.sep, ".")) for p in _project_files()} - {None}
    assert units <= set(floor), f"units without a floor: {units - set(floor)}"
    upward = [where for src, dst, where in _edges() if floor[src] >= floor[dst]]
    assert not upward, "imports that do not point down:\n" + "\n".join(upward)


def test_the_command_line_is_imported_only_by_the_scripts_and_the_grid():
    users = {src for src, dst, _ in _edges() if dst == "cli"}
    assert users <= {"scripts", "grid"}, users
    assert not [where for src, dst, where in _edges() if src == "collect" and dst == "scoring"]


def test_a_floor_rule_that_is_broken_is_seen(tmp_path):
    """The check can fail: an import of the grid from the core, inside a function, is an upward one."""
    bad = tmp_path / "core_probe.py"
    bad.write_text("import numpy\n\n\ndef f():\n    from utils.grid import plan\n    from utils.files import atomic\n")
    floor = {unit: i for i, units in enumerate(FLOORS) for unit in units}
    edges = _edges([str(bad)], lambda m: "core" if m.endswith("core_probe") else _unit(m))
    assert sorted((s, d) for s, d, _ in edges) == [("core", "files"), ("core", "grid")]
    assert [(s, d) for s, d, _ in edges if floor[s] >= floor[d]] == [("core", "grid")]


@pytest.mark.parametrize("package", sorted(n for n in os.listdir(os.path.join(REPO, "utils"))
                                           if os.path.isdir(os.path.join(REPO, "utils", n)) and n != "__pycache__"))
def test_every_subpackage_says_what_it_holds(package):
    init = os.path.join(REPO, "utils", package, "__init__.py")
    assert os.path.isfile(init), f"utils/{package} has no __init__.py"
    doc = ast.get_docstring(ast.parse(open(init, encoding="utf-8").read()))
    assert doc and len(doc.split()) >= 20, f"utils/{package}/__init__.py needs a docstring saying what it holds"
    readme = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()
    assert f"utils/{package}/" in readme, f"the README's Layout does not name utils/{package}/"


def test_no_function_or_module_outgrows_a_screen():
    too_long = []
    for folder, _, names in os.walk(os.path.join(REPO, "utils")):
        for name in (n for n in names if n.endswith(".py")):
            path = os.path.join(folder, name)
            text = open(path, encoding="utf-8").read()
            rel = os.path.relpath(path, REPO)
            if len(text.splitlines()) > MAX_MODULE_LINES:
                too_long.append(f"{rel}: {len(text.splitlines())} lines")
            for node in ast.walk(ast.parse(text)):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    lines = node.end_lineno - node.lineno + 1
                    if lines > MAX_FUNCTION_LINES:
                        too_long.append(f"{rel}:{node.lineno} {node.name}: {lines} lines")
    assert not too_long, "\n".join(too_long)


def test_no_document_names_a_file_that_does_not_exist():
    """Every ``utils/...`` or ``docs/...`` path the README, the docs and the code's docstrings name exists."""
    import re

    texts = [os.path.join(REPO, "README.md")] + [os.path.join(REPO, "docs", n) for n in os.listdir(os.path.join(REPO, "docs"))
                                                 if n.endswith(".md")] + _project_files()
    missing = []
    for path in texts:
        for ref in set(re.findall(r"\b((?:utils|docs|bench|models|tests)/[\w/]+\.(?:py|md|sh))\b", open(path, encoding="utf-8").read())):
            if not os.path.exists(os.path.join(REPO, ref)) and ref != EXAMPLE_METHOD:
                missing.append(f"{os.path.relpath(path, REPO)} names {ref}")
    assert not missing, "\n".join(sorted(missing))


def _doc_blocks(path: str, language: str = "python") -> list[str]:
    import re

    return re.findall(rf"```{language}\n(.*?)```", open(path, encoding="utf-8").read(), re.S)


def test_a_method_added_as_the_docs_say_is_scored_by_stage_2_and_trained_by_stage_3(reference, data, tmp_path):
    """docs/methods.md's "Add a method", done in a copy of the project: one new module and the
    registry's two edits; stage 2 scores it and stage 3 trains on its coreset."""
    import shutil
    import subprocess
    import sys

    from conftest import s3_flags, flag_args
    from utils.files.scores import load_scores

    clone = tmp_path / "clone"
    for name in ("utils", "models"):
        shutil.copytree(os.path.join(REPO, name), clone / name, ignore=shutil.ignore_patterns("__pycache__"))
    for script in (*SCRIPTS, "cld_recorder"):
        shutil.copy(os.path.join(REPO, f"{script}.py"), clone)
    module, import_line, modules = _doc_blocks(os.path.join(REPO, "docs", "methods.md"))[-3:]
    (clone / "utils" / "methods" / "last_loss.py").write_text(module)
    registry = clone / "utils" / "methods" / "registry.py"
    text = registry.read_text()
    head, sep, tail = text.partition("\nMODULES = (")
    assert sep and modules.strip().endswith("last_loss,\n)") and "deepfool,\n)" in tail
    registry.write_text(head + "\n" + import_line + sep + tail.replace("deepfool,\n)", "deepfool,\n    last_loss,\n)", 1))

    out = tmp_path / "last_loss.pickle"
    run = lambda script, *args: subprocess.run([sys.executable, script, *args], cwd=clone, capture_output=True,
                                               text=True, timeout=600)
    scored = run("compute_cld_scores.py", "--loss_path", reference["loss"], "--method", "last_loss",
                 "--output_path", str(out))
    assert scored.returncode == 0, scored.stderr
    record = load_scores(str(out))
    from utils.core.ranking import rank_per_class
    from utils.files.losses import load_losses

    losses = load_losses(reference["loss"])
    expected, _ = rank_per_class(losses["tr_loss"][-1].astype(np.float64), losses["tr_lbl"], losses["train_indices"])
    assert record["method"] == "last_loss" and record["indices"].keys() == expected.keys()
    assert all(np.array_equal(record["indices"][c], expected[c]) for c in expected)
    trained = run("train_on_coresets.py", *flag_args(s3_flags(data, str(out), str(tmp_path / "s3"))))
    assert trained.returncode == 0, trained.stderr
    result = json.load(open(tmp_path / "s3" / "res" / "runs" / "run.json"))
    assert result["method"] == "last_loss"
    assert sorted(result["coreset_indices"]) == sorted(int(i) for c in expected for i in expected[c][:2])
    # The project itself does not have the method: the example ran in the copy only.
    assert not os.path.exists(os.path.join(REPO, "utils", "methods", "last_loss.py"))
