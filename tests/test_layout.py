"""The layout stays one a newcomer can change in an evening: short functions, a train.py that reads top
to bottom, a package without import circles, every subpackage installed, a README that is a user's
document. These read the source; they run nothing."""

import ast
import shutil
import subprocess
import sys

import pytest

from helpers import REPO

LONGEST_FUNCTION = 60  # lines, decorators and docstring included
PACKAGE = REPO / "nanogpt"
CHECKED = sorted([*PACKAGE.rglob("*.py"), *REPO.glob("*.py"), *REPO.glob("data/*/prepare.py")])


def functions(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            yield node.name, node.end_lineno - first + 1


def test_no_function_is_longer_than_a_screen():
    long = [
        f"{path.relative_to(REPO)}:{name} ({lines} lines)"
        for path in CHECKED
        for name, lines in functions(path)
        if lines > LONGEST_FUNCTION
    ]
    assert not long, long


def test_train_py_and_the_readme_stay_short():
    assert len((REPO / "train.py").read_text().splitlines()) <= 450
    assert len((REPO / "README.md").read_text().splitlines()) <= 300


def test_ruff_formats_and_checks_the_code():
    """ruff format --check and ruff check (pyflakes, pycodestyle, lines of 120 at most; pyproject.toml) over
    the package, the scripts, bench/ and tests/."""
    for command in (["format", "--check"], ["check"]):
        result = subprocess.run(
            [sys.executable, "-m", "ruff", *command, "."], cwd=REPO, capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, result.stdout + result.stderr
    longest = max(
        len(line)
        for path in REPO.glob("**/*.py")
        if ".venv" not in path.parts
        for line in path.read_text().splitlines()
    )
    assert longest <= 120, longest


def package_imports():
    """{module: the package modules it imports, at the top or inside a function}."""
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        module = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("nanogpt"):
                imported.add(node.module)
                imported.update(f"{node.module}.{a.name}" for a in node.names)  # from nanogpt import cpu_dropout
            elif isinstance(node, ast.Import):
                imported.update(a.name for a in node.names if a.name.startswith("nanogpt"))
        graph[module] = imported
    return {module: {m for m in imported if m in graph and m != module} for module, imported in graph.items()}


def test_no_import_circle_in_the_package():
    graph = package_imports()
    assert "nanogpt.model" in graph and "nanogpt.training.muon" not in graph["nanogpt.model"]

    def circle_from(start, path):
        for after in graph[path[-1]]:
            if after == start:
                return [*path, after]
            if after not in path and after > start:  # each circle is found from its smallest module
                found = circle_from(start, [*path, after])
                if found:
                    return found
        return None

    circles = [c for c in (circle_from(m, [m]) for m in sorted(graph)) if c]
    assert not circles, circles


def test_the_engine_keeps_no_state_by_attribute_name():
    """No setattr, and no getattr of its own objects: the engine's state is declared types."""
    for path in (PACKAGE / "generation").glob("*.py"):
        for call in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(call, ast.Call)
                and isinstance(call.func, ast.Name)
                and call.func.id in ("setattr", "getattr")
            ):
                target = call.args[0]
                assert call.func.id == "getattr" and not (
                    isinstance(target, ast.Name) and target.id in ("self", "rows", "cache", "state")
                ), f"{path.name}:{call.lineno}"


@pytest.mark.slow
def test_a_plain_install_holds_every_subpackage(tmp_path):
    """pip install . (not -e) into a fresh folder: every subpackage and the page are in it. Built from a
    copy, so the build leaves nothing in the checkout."""
    source, target = tmp_path / "source", tmp_path / "site"
    shutil.copytree(PACKAGE, source / "nanogpt", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    installed = {str(p.relative_to(target)) for p in (target / "nanogpt").rglob("*") if p.suffix in (".py", ".html")}
    expected = {
        str(p.relative_to(REPO))
        for p in PACKAGE.rglob("*")
        if p.suffix in (".py", ".html") and "__pycache__" not in p.parts
    }
    assert expected <= installed, expected - installed
