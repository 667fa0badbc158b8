"""The package's layers run one way: a module imports only from its floor or below.

The floors, from the ground up (docs/architecture.md explains them):

| floor | modules |
| --- | --- |
| 0 foundation | `tf_mbalign` (`__init__`), `distribute`, `runtime`, `atomic_files` (import nothing of the package) |
| 1 data | `data/` |
| 2 modeling | `modeling/` |
| 3 config | `config` |
| 4 training | `training/` |
| 5 export | `export/` |
| 6 evaluation, tasks | `evaluation/`, `tasks/` |
| 7 binaries | `train`, `evaluate`, `finetune`, `prepare`, `export/__main__` |

Every import counts, lazy ones inside functions included.
"""

import ast
import os

import pytest

from conftest import REPO_ROOT

PACKAGE = "tf_mbalign"
# Longest matching prefix wins.
FLOORS = {
    "tf_mbalign": 0,
    "tf_mbalign.distribute": 0,
    "tf_mbalign.runtime": 0,
    "tf_mbalign.atomic_files": 0,
    "tf_mbalign.data": 1,
    "tf_mbalign.modeling": 2,
    "tf_mbalign.config": 3,
    "tf_mbalign.training": 4,
    "tf_mbalign.export": 5,
    "tf_mbalign.evaluation": 6,
    "tf_mbalign.tasks": 6,
    "tf_mbalign.train": 7,
    "tf_mbalign.evaluate": 7,
    "tf_mbalign.finetune": 7,
    "tf_mbalign.prepare": 7,
    "tf_mbalign.export.__main__": 7,
}
FOUNDATION = {"tf_mbalign.distribute", "tf_mbalign.runtime", "tf_mbalign.atomic_files",
              "tf_mbalign"}


def floor_of(module):
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        prefix = ".".join(parts[:end])
        if prefix in FLOORS:
            return FLOORS[prefix]
    raise KeyError(f"{module}: no floor in FLOORS (add it to the table)")


def package_modules(root=REPO_ROOT):
    """{module name: file path} of every .py file of the package."""
    modules = {}
    for folder, _, files in os.walk(os.path.join(root, PACKAGE)):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                relative = os.path.relpath(path, root)[:-3].replace(os.sep, ".")
                modules[relative[: -len(".__init__")] if relative.endswith(".__init__")
                        else relative] = path
    return modules


def imported_modules(source, module, known):
    """(line, imported package module) for every import in `source`, at any depth."""
    found = []
    package = module if module in known and known[module].endswith("__init__.py") \
        else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.append((node.lineno, candidate if candidate in known else base))
    return [(line, name) for line, name in found
            if name == PACKAGE or name.startswith(PACKAGE + ".")]


def upward_imports(modules):
    """'file:line: A (floor a) imports B (floor b)' for each import that runs up
    (or, in the foundation, any import of the package)."""
    problems = []
    for module, path in sorted(modules.items()):
        with open(path, encoding="utf-8") as f:
            source = f.read()
        for line, imported in imported_modules(source, module, modules):
            if imported == module:
                continue
            if module in FOUNDATION and module != PACKAGE:
                problems.append(f"{path}:{line}: {module} (foundation) imports {imported}")
            elif floor_of(imported) > floor_of(module):
                problems.append(f"{path}:{line}: {module} (floor {floor_of(module)}) imports "
                                f"{imported} (floor {floor_of(imported)})")
    return problems


def test_every_module_has_a_floor():
    for module in package_modules():
        floor_of(module)


def test_no_import_runs_up():
    problems = upward_imports(package_modules())
    assert not problems, "imports from a higher floor:\n" + "\n".join(problems)


@pytest.mark.parametrize("source,expected", [
    ("def f():\n    from tf_mbalign.training import trainer\n", 1),  # lazy, upward
    ("from tf_mbalign.evaluation.retrieval import evaluate_retrieval\n", 1),
    ("import tf_mbalign.train\n", 1),
    ("from tf_mbalign.data import corpus\n", 0),  # downward
    ("from . import pooling\n", 0),  # relative, same package
])
def test_the_check_sees_upward_imports(tmp_path, source, expected):
    """The checker itself: a modeling module with the given imports."""
    folder = tmp_path / PACKAGE / "modeling"
    folder.mkdir(parents=True)
    (tmp_path / PACKAGE / "__init__.py").write_text("")
    (folder / "__init__.py").write_text("")
    (folder / "pooling.py").write_text("")
    (folder / "probe.py").write_text(source)
    for name in ("training", "evaluation", "data"):
        (tmp_path / PACKAGE / name).mkdir()
        (tmp_path / PACKAGE / name / "__init__.py").write_text("")
    (tmp_path / PACKAGE / "training" / "trainer.py").write_text("")
    (tmp_path / PACKAGE / "evaluation" / "retrieval.py").write_text("")
    (tmp_path / PACKAGE / "data" / "corpus.py").write_text("")
    (tmp_path / PACKAGE / "train.py").write_text("")
    problems = upward_imports(package_modules(str(tmp_path)))
    assert len(problems) == expected, problems


def test_importing_the_package_leaves_the_environment_alone():
    """Only the binaries (and conftest, .ci/run) set TensorFlow's environment."""
    import subprocess
    import sys

    ours = ("TF_ENABLE_ONEDNN_OPTS", "KERAS_BACKEND", "TF_CPP_MIN_LOG_LEVEL")
    code = ("import os, json; before = dict(os.environ); import tf_mbalign; "
            "changed = sorted(set(os.environ.items()) ^ set(before.items())); "
            "import tf_mbalign.config, tf_mbalign.training.trainer; "
            f"print(json.dumps([changed, [k for k in {ours!r} if k in os.environ]]))")
    env = {k: v for k, v in os.environ.items() if k not in ours}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=REPO_ROOT, env=dict(env, PYTHONPATH=REPO_ROOT), timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    # Nothing at all from `import tf_mbalign`; none of ours from the library
    # (TensorFlow sets a few variables of its own when it loads).
    assert result.stdout.strip().splitlines()[-1] == "[[], []]"
