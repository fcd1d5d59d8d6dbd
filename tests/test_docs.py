"""The documentation holds together: every relative link and image of the front page, the guide, the benchmarks
and the changelog resolves (headings of anchors included), every page of the guide is linked from README.md, and
every command of a fenced bash block names a script, a module and config files that exist. Fast: nothing runs."""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
from pathlib import Path

import pytest

from tests.conftest import ROOT

PAGES = [ROOT / "README.md", ROOT / "CHANGELOG.md", ROOT / "benchmarks" / "README.md",
         *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^\s*(```|~~~)\s*(\S*)")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.I)  # http:, https:, mailto:
PYTHON = re.compile(r"^(?:.*/)?python(?:3(?:\.\d+)?)?$")
# Config groups: every folder under conf/ holding a config file (model, callbacks, hydra/launcher, ...).
# conf/sweep is a link to sweeps/, hence os.walk, which follows it.
GROUPS = {Path(d).relative_to(ROOT / "conf").as_posix() for d, _, files in os.walk(ROOT / "conf", followlinks=True)
          if any(f.endswith(".yaml") for f in files)} - {"."}


def rel(path: Path) -> str:
    """The path as a message names it: from the repository's root."""
    return path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else str(path)


def prose_and_blocks(path: Path) -> tuple[list[tuple[int, str]], list[tuple[int, str, list[tuple[int, str]]]]]:
    """The lines outside fenced blocks (number, text), and the fenced blocks (first line, language, lines)."""
    prose, blocks, block = [], [], None
    for number, line in enumerate(path.read_text().splitlines(), 1):
        fence = FENCE.match(line)
        if block is None and fence:
            block = (number, fence.group(2).lower(), [])
        elif block is not None and fence and not fence.group(2):
            blocks.append(block)
            block = None
        elif block is not None:
            block[2].append((number, line))
        else:
            prose.append((number, line))
    assert block is None, f"{rel(path)}:{block[0]}: a fenced block is opened and never closed"
    return prose, blocks


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: its text lowercased, punctuation but '-' and '_' dropped, spaces to '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading counts by its text
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The anchors of a page's headings; a repeated heading gets -1, -2, ... as on GitHub."""
    found: set[str] = set()
    counts: dict[str, int] = {}
    for _, line in prose_and_blocks(path)[0]:
        heading = HEADING.match(line)
        if heading:
            base = slug(heading.group(2))
            found.add(f"{base}-{counts[base]}" if counts.get(base) else base)
            counts[base] = counts.get(base, 0) + 1
    return found


def links(path: Path) -> list[tuple[int, str]]:
    """(line, target) of every link and image outside code, external ones left out."""
    found = []
    for number, line in prose_and_blocks(path)[0]:
        line = re.sub(r"(`+).*?\1", "", line)  # inline code shows syntax, it links nothing
        found += [(number, m.group(1)) for m in LINK.finditer(line) if not EXTERNAL.match(m.group(1))]
    return found


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_every_relative_link_and_image_resolves(page):
    assert page.is_file(), f"{rel(page)} is missing"
    problems = []
    for number, target in links(page):
        file_part, _, anchor = target.partition("#")
        resolved = (page.parent / file_part).resolve() if file_part else page
        if not resolved.exists():
            problems.append(f"{rel(page)}:{number}: link to {target!r}: no file {file_part!r}")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            problems.append(f"{rel(page)}:{number}: link to {target!r}: no heading #{anchor} in {rel(resolved)} "
                            f"(it has: {', '.join(sorted(anchors(resolved)))})")
    assert not problems, "\n".join(problems)


def test_every_page_of_the_guide_is_linked_from_the_readme():
    readme = ROOT / "README.md"
    linked = {(readme.parent / t.partition("#")[0]).resolve() for _, t in links(readme) if t.partition("#")[0]}
    missing = [rel(p) for p in sorted((ROOT / "docs").glob("*.md")) if p.resolve() not in linked]
    assert any((ROOT / "docs").glob("*.md")), "docs/ has no page"
    assert not missing, f"README.md links none of: {', '.join(missing)}"


def module_exists(name: str) -> bool:
    """``python -m name`` would find a module: ours by its file (nothing imported), others by their spec."""
    parts = name.split(".")
    if (ROOT / parts[0]).is_dir() or (ROOT / f"{parts[0]}.py").is_file():
        base = ROOT.joinpath(*parts)
        return base.with_suffix(".py").is_file() or (base / "__main__.py").is_file()
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def group_values(value: str) -> list[str]:
    """The config names a group override chooses: one, a list ``[a,b]``, a sweep ``a,b`` or ``choice(a,b)``."""
    if "${" in value:
        return []  # interpolated: known only when composed
    inner = re.fullmatch(r"\[(.*)\]|choice\((.*)\)", value)
    if inner:
        value = inner.group(1) if inner.group(1) is not None else inner.group(2)
    elif re.fullmatch(r"\w+\(.*\)", value):
        return []  # another sweep function (range, glob): not a list of names
    return [v.strip() for v in value.split(",") if v.strip() and v.strip() != "null"]


def command_problems(words: list[str]) -> list[str]:
    """What a command of a bash block names that does not exist."""
    while words and re.fullmatch(r"[A-Za-z_]\w*=.*", words[0]):
        words = words[1:]  # VAR=value before the program, or a plain assignment
    if not words or not PYTHON.match(words[0]) or len(words) < 2:
        return []  # not a Python command (pip, ray, wandb): nothing of ours to check
    if words[1] == "-m":
        if len(words) < 3 or not module_exists(words[2]):
            return [f"module {words[2] if len(words) > 2 else ''!r} (python -m) does not exist"]
        args = words[3:]
    elif words[1].startswith("-"):
        return []
    else:
        if not (ROOT / words[1]).is_file():
            return [f"script {words[1]!r} does not exist"]
        args = words[2:]
    problems = []
    for arg in args:
        key, eq, value = arg.partition("=")
        key = key.lstrip("+~")
        if eq and key in GROUPS:
            problems += [f"{arg!r}: no config conf/{key}/{name}.yaml" for name in group_values(value)
                         if not (ROOT / "conf" / key / f"{name}.yaml").is_file()]
    return problems


def bash_commands(path: Path) -> list[tuple[int, list[str]]]:
    """(line, words) of every command in the page's fenced bash blocks; comments dropped, ``&&`` etc. split."""
    commands = []
    for _, language, lines in prose_and_blocks(path)[1]:
        if language not in {"bash", "sh", "shell"}:
            continue
        pending, start = "", 0
        for number, line in lines:
            start = start or number
            if line.rstrip().endswith("\\"):
                pending += line.rstrip()[:-1] + " "
                continue
            words, command = shlex.split(pending + line, comments=True), []
            for word in [*words, "&&"]:
                if word in {"&&", "||", ";", "|"}:
                    if command:
                        commands.append((start, command))
                    command = []
                else:
                    command.append(word)
            pending, start = "", 0
    return commands


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_every_command_shown_names_what_exists(page):
    problems = [f"{rel(page)}:{number}: {problem}" for number, words in bash_commands(page)
                for problem in command_problems(words)]
    assert not problems, "\n".join(problems)


def test_the_checks_themselves_catch_what_they_should(tmp_path):
    """A test that cannot fail is no test: the checks above, on a page with one of each mistake."""
    assert slug("What is reproducible, and what is not") == "what-is-reproducible-and-what-is-not"
    assert slug("The quickstart's three `callbacks_x` changes") == "the-quickstarts-three-callbacks_x-changes"
    assert {"model", "callbacks", "hydra/launcher", "experiment", "sweep"} <= GROUPS
    assert command_problems(shlex.split(
        "python train.py experiment=quickstart 'callbacks=[paper,guided_backprop]' model=zfnet_small,alexnet_small "
        "hydra/launcher=ray seed=1 +experiment=transfer model.norm=lrn 'data.root=${oc.env:X}'")) == []
    assert command_problems(shlex.split("python train.py 'callbacks=[paper,nope]' model=zfnet,gone")) == [
        "'callbacks=[paper,nope]': no config conf/callbacks/nope.yaml",
        "'model=zfnet,gone': no config conf/model/gone.yaml"]
    assert command_problems(["python", "-m", "zfexp.nothing_here"]) == [
        "module 'zfexp.nothing_here' (python -m) does not exist"]
    assert command_problems(["python", "benchmarks/nothing.py"]) == ["script 'benchmarks/nothing.py' does not exist"]
    assert command_problems([".venv/bin/python", "-m", "pytest", "-q"]) == []

    page = tmp_path / "page.md"
    page.write_text("# Title\n\n## A section\n\n[ok](#a-section) [bad](#no-section) [gone](missing.md) `[code](x.md)`\n"
                    "\n```bash\npython train.py +experiment=nope  # a comment\n```\n")
    found = links(page)
    assert [t for _, t in found] == ["#a-section", "#no-section", "missing.md"]
    assert anchors(page) == {"title", "a-section"}
    ((number, words),) = bash_commands(page)
    assert number == 8 and command_problems(words) == ["'+experiment=nope': no config conf/experiment/nope.yaml"]
    page.write_text("```bash\npython train.py\n")
    with pytest.raises(AssertionError, match="never closed"):
        prose_and_blocks(page)
