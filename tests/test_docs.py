"""The documentation: the docs site builds strictly, and every link and citation into it resolves.

The site (`mkdocs.yml`, docs/) is built as `just docs` builds it, in strict mode, so a broken link, a
link to a missing heading or an API entry that cannot be collected fails `just test` (and CI). What
MkDocs does not see is checked here too: the README's links into docs/, the `docs/<page>.md
"<heading>"` citations in the code, the API page's member lists, and the command tables.
"""

import ast
import html
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
CODE_DIRS = ("cxrfeat", "heads", "analysis", "tests")


def _headings(path: Path) -> list[str]:
    """The text of every Markdown heading of a page (outside code blocks), code spans unquoted."""
    out, fence = [], False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            fence = not fence
        elif not fence and (m := re.match(r"^#{1,6} +(.*?)\s*$", line)):
            out.append(m.group(1).replace("`", ""))
    return out


def _anchors(path: Path) -> set[str]:
    """The ids MkDocs gives the headings of a page (Python-Markdown's toc slugify, as mkdocs.yml uses it)."""
    from markdown.extensions.toc import slugify

    return {slugify(h, "-") for h in _headings(path)}


def _defined(module: str) -> dict[str, ast.AST]:
    """The top-level functions and classes of a module of this repository, read without importing it."""
    source = REPO / (module.replace(".", "/") + ".py")
    assert source.is_file(), f"{module} is not a module of this repository"
    return {node.name: node for node in ast.parse(source.read_text()).body
            if isinstance(node, ast.FunctionDef | ast.ClassDef)}


def _docstring(module: str, name: str) -> str:
    return ast.get_docstring(_defined(module)[name])


def test_the_docs_site_builds_strictly_and_renders_the_api_from_the_docstrings(tmp_path):
    pytest.importorskip("mkdocs", reason="the docs site needs the dev extra (pip install -e '.[dev]')")
    pytest.importorskip("mkdocstrings", reason="the docs site needs the dev extra (pip install -e '.[dev]')")
    pytest.importorskip("material", reason="the docs site needs the dev extra (pip install -e '.[dev]')")
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(REPO / "mkdocs.yml"),
                           "-d", str(site)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "WARNING" not in proc.stderr, proc.stderr[-3000:]
    page = (site / "api" / "index.html").read_text()
    text = re.sub(r"<[^>]+>", "", page)
    # Rendered from the docstrings themselves: the first line of each, not only the names.
    for module, name in (("heads.quantum", "expvals"), ("heads.export", "to_qasm3"), ("analysis.report", "build_report")):
        first = _docstring(module, name).splitlines()[0]
        assert f'id="{module}.{name}"' in page and html.escape(first.replace("`", ""), quote=False) in text, (module, name)
    for page in ("quickstart", "training", "performance", "noise", "design", "console", "export", "mps-kernel"):
        assert (site / page / "index.html").is_file(), page


def test_every_api_entry_names_a_real_module_member():
    """mkdocstrings skips a listed member that does not exist; this does not."""
    text = (DOCS / "api.md").read_text()
    blocks = re.findall(r"^::: ([\w.]+)\n((?:    .*\n)*)", text, flags=re.M)
    assert len(blocks) >= 10
    for module, options in blocks:
        defined = _defined(module)
        members = re.search(r"members: \[([^\]]*)\]", options)
        assert members, f"api.md: {module} lists no members"
        for name in (m.strip() for m in members.group(1).split(",")):
            assert name in defined, f"api.md: {module}.{name} does not exist"


def test_the_readme_links_resolve_to_files_and_headings():
    readme = (REPO / "README.md").read_text()
    links = re.findall(r"\]\(([^)\s]+)\)", readme)
    assert any(link.startswith("docs/") for link in links)
    for link in links:
        if re.match(r"^[a-z]+://", link):
            continue
        path, _, anchor = link.partition("#")
        target = REPO / path
        assert target.exists(), f"README.md links to {path}, which does not exist"
        if anchor:
            assert target.suffix == ".md" and anchor in _anchors(target), f"README.md: no heading #{anchor} in {path}"


def test_the_codes_citations_of_the_docs_resolve():
    """`docs/<page>.md` named in code exists, `docs/<page>.md "<heading>"` names one of its headings, and no
    code cites a section of the README (a front page: its sections live in docs/)."""
    cited = 0
    for folder in CODE_DIRS:
        for py in sorted((REPO / folder).rglob("*.py")):
            text = py.read_text()
            where = py.relative_to(REPO)
            for page in re.findall(r"docs/([\w.-]+\.md)", text):
                assert (DOCS / page).is_file(), f"{where} cites docs/{page}, which does not exist"
            for page, heading in re.findall(r"docs/([\w.-]+\.md)`?\s*\"([^\"<>]+)\"", text):
                cited += 1
                assert heading in _headings(DOCS / page), f'{where} cites docs/{page} "{heading}": no such heading'
            assert not re.search(r"see (the )?README|README[,:]? \"", text), f"{where} cites a README section"
    assert cited >= 10


def _command_rows(path: Path) -> dict[str, str]:
    """`command` -> example of each row of the page's command table."""
    rows = re.findall(r"^\| `([a-z]+ [a-z-]+)` \| [^|]+ \| `([^`]+)` \|$", path.read_text(), flags=re.M)
    return dict(rows)


def test_the_command_tables_list_every_command_with_an_example():
    from analysis.cli import app as analysis_app
    from cxrfeat.cli import app as cxrfeat_app
    from heads.cli import app as heads_app

    commands = {f"{prog} {name}" for prog, app in (("cxrfeat", cxrfeat_app), ("heads", heads_app),
                                                   ("analysis", analysis_app))
                for name in typer.main.get_command(app).commands}
    assert len(commands) >= 17
    for page in (REPO / "README.md", DOCS / "index.md"):
        rows = _command_rows(page)
        assert set(rows) == commands, f"{page.name}: missing {commands - set(rows)}, unknown {set(rows) - commands}"
        for command, example in rows.items():
            assert example == command or example.startswith(command + " "), f"{page.name}: {command} example {example}"


def test_the_readme_is_a_front_page_with_the_quick_start_ci_runs():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) < 200
    ci = (REPO / ".ci" / "run").read_text()
    install = re.search(r"pip install -q (-e '\.\[[\w,]+\]')", ci).group(1)
    assert f"pip install {install} && just test" in readme  # .ci/run installs as the quick start says
    assert "pip install -e '.[dev]' && just demo" in readme
