"""The docs stay true where a machine can tell (no model runs).

- Every relative link and `#anchor` in every Markdown file of the repository
  resolves (GitHub's heading slugs), and stays inside the repository.
- Every `--flag` the docs and configs name exists: in a command of a binary
  (`python -m tf_mbalign.X`, `tf-mbalign-X`), among that binary's flags; in a
  command of a benchmark script, among its flags; named alone, among the flags
  of any binary or benchmark script. Flags are read from the code as the
  binaries define them (`tests/binary_flags.py`, one process, no `main` run).
- Every binary's command line in the docs parses (README.md's and
  configs/README.md's among them): absl reads its flags and flag files, as
  `--helpfull` would, without running it. configs/README.md runs every config
  this way, with its binary.
- No doc names an issue number or the session history of its writing.
"""

import functools
import os
import re
import shlex
import subprocess

import pytest

import binary_flags

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BINARY_MODULES = {"train": "tf_mbalign.train", "evaluate": "tf_mbalign.evaluate",
                  "finetune": "tf_mbalign.finetune", "prepare": "tf_mbalign.prepare",
                  "export": "tf_mbalign.export.__main__"}
# The positional arguments each binary takes (the rest it refuses).
POSITIONAL = {"tf_mbalign.evaluate": {("retrieval",), ("compare",), ("suite",)}}
# Commands of other programs: their flags are not ours to check.
OTHER_PROGRAMS = {"pip", "pytest", "venv", "docker", "curl", "git", "du", "saved_model_cli",
                  "tensorboard", "time", "ln", "cp", "bash"}
SHELL_OPERATORS = {"&&", "||", ";", "|", "&"}
FORBIDDEN_HISTORY = re.compile(r"\bissues?\s*#?\d+|\bthis session\b", re.IGNORECASE)


# === Markdown ===
def markdown_files():
    """Every Markdown file git tracks (every one below the root without git)."""
    try:
        listed = subprocess.run(["git", "ls-files", "*.md"], cwd=REPO_ROOT, text=True,
                                capture_output=True, check=True).stdout.split()
        if listed:
            return sorted(listed)
    except (OSError, subprocess.CalledProcessError):
        pass
    found = []
    for folder, subfolders, files in os.walk(REPO_ROOT):
        subfolders[:] = [d for d in subfolders if not d.startswith(".") and d not in (
            "runs", "results", "__pycache__")]
        found += [os.path.relpath(os.path.join(folder, f), REPO_ROOT) for f in files
                  if f.endswith(".md")]
    return sorted(found)


def read(path):
    with open(os.path.join(REPO_ROOT, path), encoding="utf-8") as f:
        return f.read()


def split_fences(text):
    """(prose lines, code lines): lines inside ``` / ~~~ fences are code. The
    prose keeps one entry per line of the file (fences and code blank), so
    that its index is the line number."""
    prose, code, fence = [], [], None
    for line in text.splitlines():
        marker = re.match(r"\s*(`{3,}|~{3,})", line)
        if marker and (fence is None or marker.group(1).startswith(fence)):
            fence = None if fence else marker.group(1)[:3]
            prose.append("")
            continue
        if fence:
            code.append(line)
        prose.append("" if fence else line)
    return prose, code


def without_inline_code(line):
    return re.sub(r"(`+)(.+?)\1", "", line)


def inline_code(line):
    return [match.group(2) for match in re.finditer(r"(`+)(.+?)\1", line)]


def github_slug(heading):
    """The anchor GitHub gives a heading: lower case, punctuation dropped
    (letters, digits, `_`, `-` and spaces kept), spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


@functools.lru_cache(maxsize=None)
def anchors(path):
    """The anchors of a Markdown file: its headings' slugs (a repeated slug
    gets -1, -2, ...) and explicit `id=` / `name=` attributes."""
    prose, _ = split_fences(read(path))
    found, seen = set(), {}
    for line in prose:
        heading = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading:
            slug = github_slug(heading.group(1))
            found.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
            seen[slug] = seen.get(slug, 0) + 1
        found.update(re.findall(r"""(?:id|name)=["']([^"']+)["']""", line))
    return found


def links(path):
    """(line number, target) of every Markdown link and image outside code."""
    prose, _ = split_fences(read(path))
    found = []
    for number, line in enumerate(prose, 1):
        for target in re.findall(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)",
                                 without_inline_code(line)):
            found.append((number, target))
    return found


def broken_link(path, target):
    """Why a link from `path` does not resolve, or None."""
    if re.match(r"[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):
        return None  # http:, https:, mailto:
    file_part, _, anchor = target.partition("#")
    from urllib.parse import unquote

    resolved = os.path.normpath(os.path.join(os.path.dirname(path), unquote(file_part))) \
        if file_part else path
    if resolved.startswith(".."):
        return f"{target}: outside the repository"
    if not os.path.exists(os.path.join(REPO_ROOT, resolved)):
        return f"{target}: no file {resolved}"
    if anchor and resolved.endswith(".md") and anchor not in anchors(resolved):
        return f"{target}: no heading with the anchor #{anchor} in {resolved}"
    return None


# === Command lines ===
def commands_of(lines):
    """The shell commands in code lines: continuation lines joined, comments
    dropped, split at `&&`, `;`, `|`, `&`; each a list of words."""
    joined, current = [], ""
    for line in lines:
        current += line.rstrip()
        if current.endswith("\\"):
            current = current[:-1] + " "
            continue
        joined.append(current)
        current = ""
    joined.append(current)
    commands = []
    for text in joined:
        try:
            lexer = shlex.shlex(text, posix=True, punctuation_chars=";&|")
            lexer.whitespace_split, lexer.commenters = True, "#"
            words = list(lexer)
        except ValueError:  # an unbalanced quote in prose code: read it word by word
            words = text.split()
        command = []
        for word in words:
            if word in SHELL_OPERATORS:
                commands.append(command)
                command = []
            else:
                command.append(word)
        commands.append(command)
    return [c for c in commands if c]


def program_of(words):
    """(kind, name, index of the first argument): kind "binary" (name = its
    module), "benchmark" (name = the script), "other" (another program), or
    "bare" (flags named alone)."""
    for i, word in enumerate(words):
        binary = re.fullmatch(r"(?:\S*/)?tf-mbalign-(\w+)|tf_mbalign\.(\w+)", word)
        name = binary and (binary.group(1) or binary.group(2))
        if name in BINARY_MODULES:
            return "binary", BINARY_MODULES[name], i + 1
    for i, word in enumerate(words):
        script = re.fullmatch(r"(?:\S*/)?benchmarks/(\w+)\.py", word)
        if script:
            return "benchmark", script.group(1), i + 1
    for i, word in enumerate(words):
        if os.path.basename(word) in OTHER_PROGRAMS:
            return "other", word, i + 1
    return "bare", None, 0


def flag_name(word):
    match = re.match(r"--([A-Za-z_][\w-]*)", word)
    return match.group(1) if match else None


def doc_commands(path):
    """Every command in `path`'s code blocks and inline code spans."""
    if path.endswith(".flags"):
        return []
    prose, code = split_fences(read(path))
    spans = [[span] for line in prose for span in inline_code(line)]
    return commands_of(code) + [c for span in spans for c in commands_of(span)]


@functools.lru_cache(maxsize=None)
def benchmark_flags(script):
    """The flags a benchmark script defines (argparse or absl), read from its source."""
    source = read(os.path.join("benchmarks", f"{script}.py"))
    return set(re.findall(r"add_argument\(\s*\"--([\w-]+)\"", source)) | set(
        re.findall(r"DEFINE_\w+\(\s*\"(\w+)\"", source))


def all_benchmark_flags():
    scripts = [f[:-3] for f in os.listdir(os.path.join(REPO_ROOT, "benchmarks"))
               if f.endswith(".py")]
    return set().union(*(benchmark_flags(script) for script in scripts))


def known(name, own, booleans):
    """Whether `--name` is one of `own` (a `--noNAME` for a boolean NAME too)."""
    return name in own or (name.startswith("no") and name[2:] in booleans)


def parse_requests():
    """{module: [(doc, arguments), ...]}: every binary command line of the docs
    (a binary named with arguments; README.md and configs/README.md among
    them, the reports written into docs/results/ left out), to be parsed dry."""
    requests = {}
    for path in markdown_files():
        if path.startswith("docs/results/"):
            continue
        for words in doc_commands(path):
            kind, module, start = program_of(words)
            if kind == "binary" and words[start:]:  # a bare name is a mention, not a command
                requests.setdefault(module, []).append((path, words[start:]))
    return requests


@functools.lru_cache(maxsize=None)
def collected():
    """`binary_flags.collect`'s answer for `parse_requests()`, and the requests."""
    requests = parse_requests()
    parse = {module: [arguments for _, arguments in lines] for module, lines in requests.items()}
    return binary_flags.collect({"parse": parse}), requests


def unknown_flags(path, answer):
    """`file: flag (where)` for every flag `path` names that nothing defines."""
    absl = set(answer["absl"])
    binaries = answer["binaries"]
    any_flag = absl | all_benchmark_flags() | set().union(
        *(set(b["flags"]) for b in binaries.values()))
    any_boolean = set().union(*(set(b["booleans"]) for b in binaries.values()))
    problems = []
    for words in doc_commands(path):
        kind, name, start = program_of(words)
        if kind == "other":
            continue
        if kind == "binary":
            own, booleans, where = set(binaries[name]["flags"]) | absl, set(
                binaries[name]["booleans"]), name
        elif kind == "benchmark":
            own, booleans, where = benchmark_flags(name), set(), f"benchmarks/{name}.py"
        else:
            own, booleans, where = any_flag, any_boolean, "any binary or benchmark"
        for word in words[start:]:
            if word == "--":  # what follows goes to another program
                break
            flag = flag_name(word)
            if flag and not known(flag, own, booleans):
                problems.append(f"{path}: --{flag} is not a flag of {where} "
                                f"(in `{' '.join(words)}`)")
    return problems


def config_binaries():
    """{config file: binary module} from configs/README.md's commands."""
    found = {}
    for words in doc_commands("configs/README.md"):
        kind, module, start = program_of(words)
        for word in words[start:] if kind == "binary" else []:
            match = re.fullmatch(r"--flagfile=configs/([\w.-]+\.flags)", word)
            if match:
                found.setdefault(match.group(1), module)
    return found


# === Tests ===
@pytest.mark.parametrize("path", markdown_files())
def test_every_relative_link_and_anchor_resolves(path):
    broken = [f"{path}:{number}: {why}" for number, target in links(path)
              if (why := broken_link(path, target))]
    assert not broken, "\n".join(broken)


def test_github_slugs_follow_githubs_rule():
    assert github_slug("Measured times") == "measured-times"
    assert github_slug("Did alignment happen? The before → after check") == \
        "did-alignment-happen-the-before--after-check"
    assert github_slug("`--precision=auto`: why") == "--precisionauto-why"
    assert github_slug("Exports: [TF-Hub](x.md), Keras") == "exports-tf-hub-keras"


def test_a_broken_link_and_a_missing_anchor_are_found():
    assert broken_link("README.md", "docs/training.md") is None
    assert "no file" in broken_link("README.md", "docs/no_such_guide.md")
    assert "no heading" in broken_link("README.md", "BENCHMARKS.md#no-such-heading")
    assert "outside the repository" in broken_link("README.md", "../shared/data/README.md")


@pytest.mark.parametrize("path", [*markdown_files(), *sorted(
    os.path.join("configs", f) for f in os.listdir(os.path.join(REPO_ROOT, "configs"))
    if f.endswith(".flags"))])
def test_no_doc_names_an_issue_number_or_session_history(path):
    found = [f"{path}:{number}: {line.strip()}"
             for number, line in enumerate(read(path).splitlines(), 1)
             if FORBIDDEN_HISTORY.search(line)]
    assert not found, "\n".join(found)


def test_every_flag_the_docs_name_exists():
    answer, _ = collected()
    problems = [p for path in markdown_files() for p in unknown_flags(path, answer)]
    assert not problems, "\n".join(problems)


def test_every_flag_a_config_names_exists_in_its_binary():
    answer, _ = collected()
    binaries = config_binaries()
    configs = sorted(f for f in os.listdir(os.path.join(REPO_ROOT, "configs"))
                     if f.endswith(".flags"))
    assert sorted(binaries) == configs, "configs/README.md runs every config with its binary"
    problems = []
    for config in configs:
        binary = answer["binaries"][binaries[config]]
        own = set(binary["flags"]) | set(answer["absl"])
        for number, line in enumerate(read(os.path.join("configs", config)).splitlines(), 1):
            for word in line.replace("(", " ").split():
                flag = flag_name(word)
                if flag and not known(flag, own, set(binary["booleans"])):
                    problems.append(f"configs/{config}:{number}: --{flag} is not a flag of "
                                    f"{binaries[config]}")
    assert not problems, "\n".join(problems)


def test_every_binary_command_of_the_docs_parses():
    answer, requests = collected()
    assert ("README.md", ["--flagfile=configs/align.flags"]) in requests["tf_mbalign.train"], \
        "README.md shows the main job"
    problems = []
    for module, lines in requests.items():
        for (path, arguments), parsed in zip(lines, answer["binaries"][module]["parses"]):
            command = f"{path}: {module} {' '.join(arguments)}"
            if parsed["error"]:
                problems.append(f"{command}: {parsed['error']}")
            elif tuple(parsed["positional"]) not in POSITIONAL.get(module, {()}):
                problems.append(f"{command}: unexpected arguments {parsed['positional']}")
    assert not problems, "\n".join(problems)


def test_flags_are_checked_against_their_binary():
    answer, _ = collected()
    train = answer["binaries"]["tf_mbalign.train"]
    assert "global_batch_size" in train["flags"] and "batch_size" not in train["flags"]
    assert "export" in train["booleans"] and known("noexport", set(), set(train["booleans"]))
    assert "batch_size" in answer["binaries"]["tf_mbalign.finetune"]["flags"]
    assert program_of(shlex.split("tf-mbalign-train --batch_size=8"))[:2] == \
        ("binary", "tf_mbalign.train")
