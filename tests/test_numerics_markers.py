"""The rules of `numerics` tests (BUILD_NOTES.md, "Numerical tolerances"):
each says in one `# tolerance:` line why its tolerance is what it is, and the
markers `.ci/run` selects by are registered, and a `numerics` test that
names a reduced precision carries that precision's marker (the capped pass
leaves such tests out before they run: their matmuls segfault there)."""

import ast
import configparser
import glob
import os
import re

from conftest import REPO_ROOT


def _marks(function):
    """Names of the `pytest.mark.X` decorators of a test function."""
    names = set()
    for decorator in function.decorator_list:
        node = decorator.func if isinstance(decorator, ast.Call) else decorator
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
                and node.value.attr == "mark"):
            names.add(node.attr)
    return names


def numerics_tests(paths):
    """(file:line, function node, source lines, first decorator's line) of
    each `numerics` test in `paths` (`file:line` points at that decorator)."""
    for path in paths:
        with open(path, encoding="utf-8") as f:
            source = f.read()
        lines = source.splitlines()
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.FunctionDef) and "numerics" in _marks(node):
                first = min(d.lineno for d in node.decorator_list)
                yield f"{os.path.relpath(path, REPO_ROOT)}:{first}", node, lines, first


def numerics_tests_without_a_reason(paths):
    """[(file:line, test)] of `numerics` tests whose decorators are not
    preceded by a comment block holding a `# tolerance:` line."""
    missing = []
    for where, node, lines, first in numerics_tests(paths):
        comments = []  # the comment block right above the decorators
        for line in reversed(lines[:first - 1]):
            if not line.strip().startswith("#"):
                break
            comments.append(line.strip())
        if not any(line.startswith("# tolerance:") for line in comments):
            missing.append((where, node.name))
    return missing


def test_every_numerics_test_states_why_its_tolerance_is_what_it_is(tmp_path):
    paths = sorted(glob.glob(os.path.join(REPO_ROOT, "tests", "test_*.py")))
    found = numerics_tests_without_a_reason(paths)
    assert found == [], f"add a '# tolerance: <why>' line above these tests' decorators: {found}"
    # The check can fail: a numerics test without the line is found.
    bad = tmp_path / "test_bad.py"
    bad.write_text("import pytest\n\n\n@pytest.mark.numerics\ndef test_x():\n    pass\n")
    assert numerics_tests_without_a_reason([str(bad)]) == [(os.path.relpath(str(bad), REPO_ROOT) + ":4", "test_x")]


# A test's source (decorators included) naming the precision, and the marker
# it must then carry; "float16" without a "b" before it.
PRECISION_MARKERS = {"bfloat16": r"bfloat16", "float16": r"(?<![b])float16"}


def numerics_tests_without_their_precision_marker(paths):
    """[(file:line, test, marker)] of `numerics` tests whose source names a
    reduced precision without carrying `pytest.mark.<that precision>`
    (directly or on a `pytest.param`)."""
    missing = []
    for where, node, lines, first in numerics_tests(paths):
        text = "\n".join(lines[first - 1:node.end_lineno])
        for marker, named in PRECISION_MARKERS.items():
            if re.search(named, text) and f"mark.{marker}" not in text:
                missing.append((where, node.name, marker))
    return missing


def test_numerics_tests_that_run_a_reduced_precision_carry_its_marker(tmp_path):
    paths = sorted(glob.glob(os.path.join(REPO_ROOT, "tests", "test_*.py")))
    found = numerics_tests_without_their_precision_marker(paths)
    assert found == [], ("mark these tests (or their pytest.param) with pytest.mark.<precision>, "
                         f"so that .ci/run's capped pass leaves them out: {found}")
    # The check can fail: a float16 test marked bfloat16 only is found, and a
    # bfloat16 one is not taken for float16.
    bad = tmp_path / "test_bad.py"
    bad.write_text("import pytest\n\n\n# tolerance: x\n@pytest.mark.numerics\n"
                   "@pytest.mark.parametrize('p', ['mixed_float16', pytest.param(\n"
                   "    'mixed_bfloat16', marks=pytest.mark.bfloat16)])\ndef test_x(p):\n"
                   "    pass\n\n\n# tolerance: x\n@pytest.mark.numerics\n"
                   "@pytest.mark.bfloat16\ndef test_y():\n    assert 'bfloat16'\n")
    assert numerics_tests_without_their_precision_marker([str(bad)]) == [
        (os.path.relpath(str(bad), REPO_ROOT) + ":5", "test_x", "float16")]


def test_the_markers_ci_selects_by_are_registered():
    config = configparser.ConfigParser()
    config.read(os.path.join(REPO_ROOT, "setup.cfg"))
    registered = {line.split(":")[0].strip()
                  for line in config["tool:pytest"]["markers"].splitlines() if line.strip()}
    assert {"numerics", "bfloat16", "float16", "slow", "distributed"} <= registered
    with open(os.path.join(REPO_ROOT, ".ci", "run"), encoding="utf-8") as f:
        script = f.read()
    assert ('-m numerics' in script
            and '"numerics and not bfloat16 and not float16"' in script)
