"""The user documentation in docs/: every reference to it resolves, and nothing points at
documents the repository does not ship."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from click.testing import CliRunner

from compressc.cli import main

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
TEXT_SUFFIXES = {".py", ".md", ".toml", ".txt", ".cfg"}
SECTION_REF = re.compile(r"docs/(\w+\.md) §(\d+)")
LINK = re.compile(r"\]\(([^)#\s]+\.md)?(?:#([^)\s]+))?\)")


def shipped_text_files() -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout.split()
    return [REPO / p for p in listed if Path(p).suffix in TEXT_SUFFIXES and (REPO / p).is_file()]


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to dashes."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def headings(doc: Path) -> list[str]:
    return [line.lstrip("#").strip() for line in doc.read_text().splitlines() if line.startswith("#")]


def test_the_four_user_documents_exist():
    assert sorted(p.name for p in DOCS.glob("*.md")) == [
        "architecture.md", "formats.md", "kernels.md", "pipeline.md",
    ]


def test_nothing_refers_to_documents_the_repository_does_not_ship():
    unshipped = re.compile(r"\b(SPEC|SPEC_FORMATS|DESIGN|STYLE)\.md\b|\bSPEC (§|\d)")
    here = Path(__file__).resolve()
    bad = [
        f"{path.relative_to(REPO)}:{n}"
        for path in shipped_text_files() if path != here
        for n, line in enumerate(path.read_text().splitlines(), 1) if unshipped.search(line)
    ]
    assert bad == []


def test_every_section_reference_names_a_real_section():
    texts = [path.read_text() for path in shipped_text_files()]
    refs = {(m[1], int(m[2])) for text in texts for m in SECTION_REF.finditer(text)}
    assert refs, "expected the code to cite docs/ sections"
    for name, number in sorted(refs):
        numbered = [h for h in headings(DOCS / name) if h.startswith(f"{number}. ")]
        assert len(numbered) == 1, f"docs/{name} has no section {number}"


def test_every_markdown_link_resolves():
    for doc in [*DOCS.glob("*.md"), REPO / "README.md"]:
        for target, anchor in LINK.findall(doc.read_text()):
            path = (doc.parent / target) if target else doc
            assert path.is_file(), f"{doc.name}: link to missing {target}"
            if anchor:
                assert anchor in {slug(h) for h in headings(path)}, f"{doc.name}: no #{anchor} in {path.name}"


def test_help_points_at_the_docs():
    out = CliRunner().invoke(main, ["--help"]).output
    named = set(re.findall(r"docs/(\w+\.md)", out))
    assert named == {p.name for p in DOCS.glob("*.md")}


def _readme() -> str:
    return (REPO / "README.md").read_text()


def test_readme_table_of_variables_is_config_env_table():
    from compressc.config import ENV_TABLE

    rows = re.findall(r"^\| `(COMPRESSC_\w+)` \| (.+?) \| (.+?) \|$", _readme(), re.M)
    assert rows == list(ENV_TABLE)


def test_readme_set_up_commands_are_what_ci_runs():
    """The README's two set-up commands: the test one is .ci/run's last line verbatim, and
    the build one names only options `compressc build` has."""
    blocks = re.findall(r"```bash\n(pip install .+?)\n```", _readme())
    assert len(blocks) == 2, blocks
    build, tests = blocks
    ci = (REPO / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci.replace("pip install -q ", "pip install ", 1) == tests
    assert build.startswith("pip install torch==2.13.0 -e '.[build]' && compressc build ")
    args = build.split("&& compressc ", 1)[1].split()
    result = CliRunner().invoke(main, [*args, "--help"])
    assert result.exit_code == 0, result.output


def test_readme_has_one_gpu_host_section():
    text = _readme()
    assert text.count("## On a GPU host") == 1 and "## GPU tests" not in text
    section = text.split("## On a GPU host", 1)[1]
    for needed in ("--out build/kernels", "COMPRESSC_CACHE_DIR", "PYTHONPATH=.", "COMPRESSC_SCHEDULES_DIR",
                   "reserve_c128a_scratch", "call each op once"):
        assert needed in section, needed


def test_every_compressc_variable_in_the_code_is_in_the_table():
    """A variable named anywhere as a string (package, tests, benchmarks) must be in
    config.ENV_TABLE, and so in the README table and `compressc show-config`."""
    from compressc.config import ENV_TABLE

    documented = {name for name, _, _ in ENV_TABLE}
    used = {
        name
        for path in shipped_text_files() if path.suffix == ".py" and path.name != "test_show_config.py"
        for name in re.findall(r"[\"']\$?(COMPRESSC_[A-Z][A-Z_]*[A-Z])[\"']", path.read_text())
    }
    assert used - documented == set()
