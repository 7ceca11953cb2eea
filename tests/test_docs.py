"""The documentation site builds with no warnings, and its API pages cover every public name.

`mkdocs build --strict` turns every warning into an error: a broken link or anchor, a missing
snippet, a `::: sst.NAME` entry that does not resolve. The notebooks are not executed here
(`SST_DOCS_EXECUTE=false`, honoured by mkdocs.yml): `tests/test_notebooks.py` already runs them.
`make docs` builds the full site, notebooks executed.
"""

import importlib.util
import inspect
import os
import pathlib
import re
import subprocess
import sys

import pytest

import sst

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_api_pages_cover_every_public_name():
    entries = set()
    for page in (ROOT / "docs" / "api").glob("*.md"):
        entries |= set(re.findall(r"^::: sst\.(?:\w+\.)*(\w+)\s*$", page.read_text(), re.M))
    public = {n for n, v in vars(sst).items() if not n.startswith("_") and not inspect.ismodule(v)}
    missing = sorted(public - entries)
    assert not missing, f"public names without an entry in docs/api/*.md: {missing}"


def test_first_solve_output_is_the_readmes():
    """The docs home page shows docs/figures/first_solve.txt, which docs/scripts/first_solve.py
    writes; its solve is the README's first block, whose printed output the README states and
    tests/test_readme.py checks: the same steps, final risk and learning times, to 2%."""
    readme_block = re.search(
        r"^```python\n(.*?)^```", (ROOT / "README.md").read_text(), re.S | re.M
    )
    stated = "\n".join(
        line.strip()[3:]
        for line in readme_block.group(1).splitlines()
        if line.strip().startswith("#> ")
    )
    accepted, rejected = re.search(r"(\d+) accepted steps, (\d+) rejected", stated).groups()
    readme = [int(accepted) + int(rejected), float(re.search(r"final risk ([^,\s]+)", stated)[1])]
    readme += [
        float(t) for t in re.search(r"half-learning time per degree (.*)", stated)[1].split()
    ]
    text = (ROOT / "docs" / "figures" / "first_solve.txt").read_text()
    shown = [
        int(re.search(r"(\d+) steps", text)[1]),
        float(re.search(r"final risk (\S+)", text)[1]),
    ]
    shown += [float(t) for t in re.findall(r"half learned at t = (\S+)", text)]
    assert len(shown) == len(readme), (text, stated)
    assert shown == pytest.approx(readme, rel=0.02), (
        "docs/figures/first_solve.txt differs from the README's first block: rerun "
        "docs/scripts/first_solve.py (or update the README's #> lines)"
    )


@pytest.mark.slow
def test_docs_build_strict(tmp_path):
    pytest.importorskip("mkdocs", reason="the docs extra is not installed (pip install -e .[docs])")
    pytest.importorskip("mkdocstrings", reason="the docs extra is not installed")
    pytest.importorskip("mkdocs_jupyter", reason="the docs extra is not installed")
    env = dict(os.environ, SST_DOCS_EXECUTE="false", NO_MKDOCS_2_WARNING="1")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stderr[-5000:]}"
    for page in ("index.html", "model/index.html", "api/solving/index.html"):
        assert (tmp_path / "site" / page).is_file(), f"{page} was not built"
    model = (tmp_path / "site" / "model" / "index.html").read_text()
    for anchor in (
        "hermite-conventions",
        "finite-dimensional-ode",
        "mean-field-ode",
        "time-scales",
        "sgd",
    ):
        assert f'id="{anchor}"' in model, f"model page lost its anchor #{anchor}"
    assert (tmp_path / "site" / "_static" / "mathjax" / "tex-svg.js").is_file()
    # The notebooks link the docs pages by their paths from notebooks/ (../docs/model.md#...),
    # which open in a clone and on GitHub; on the site they are the pages' URLs.
    for notebook in sorted((ROOT / "notebooks").glob("*.ipynb")):
        page = (tmp_path / "site" / "notebooks" / notebook.stem / "index.html").read_text()
        assert "../docs/" not in page, f"{notebook.name}: a link to ../docs/ was not rewritten"
    quickstart = (tmp_path / "site" / "notebooks" / "01_quickstart" / "index.html").read_text()
    assert 'href="../../model/#hermite-conventions"' in quickstart


def _hooks():
    pytest.importorskip("mkdocs", reason="the docs extra is not installed (pip install -e .[docs])")
    spec = importlib.util.spec_from_file_location("hooks", ROOT / "docs" / "hooks.py")
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    return hooks


def test_notebook_links_to_docs_pages(caplog):
    """docs/hooks.py makes a notebook's link ../docs/PAGE.md#anchor the page's URL, and warns
    (an error of the strict build) when the page or the anchor does not exist."""
    hooks = _hooks()

    class Page:
        file = type("F", (), {"src_uri": "notebooks/01_quickstart.ipynb"})()

    class Target:
        src_uri, abs_src_path = "model.md", str(ROOT / "docs" / "model.md")

        def url_relative_to(self, other):
            return "../../model/"

    class Files:
        def get_file_from_path(self, path):
            return Target() if path == "model.md" else None

    html = (
        '<a href="../docs/model.md#time-scales">a</a> <a href="../docs/model.md#nowhere">b</a> '
        '<a href="../docs/missing.md">c</a>'
    )
    out = hooks.on_page_content(html, Page(), {}, Files())
    assert 'href="../../model/#time-scales"' in out
    assert 'href="../docs/missing.md"' in out
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "model.md#nowhere" in warned and "missing.md" in warned
    assert "time-scales" not in warned
    caplog.clear()
    cell = '<div data-mime-type="application/vnd.jupyter.stderr" tabindex="0"><pre>%s</pre></div>'
    hooks.on_page_content(cell % "x.py:3: UserWarning: careful", Page(), {}, Files())
    hooks.on_page_content(cell % "progress 50%", Page(), {}, Files())
    assert [r.getMessage().split(": ", 1)[1] for r in caplog.records] == [
        "x.py:3: UserWarning: careful"
    ]


@pytest.mark.slow
def test_executed_notebook_shows_no_warning_cell(tmp_path):
    """tqdm warns "IProgress not found" when sst imports it in a kernel without ipywidgets: the
    docs build (docs/hooks.py) runs the kernels with that warning filtered."""
    nbconvert2 = pytest.importorskip("mkdocs_jupyter.nbconvert2", reason="no docs extra")
    nbformat = pytest.importorskip("nbformat")
    hooks = _hooks()
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import sst")])
    nbformat.write(notebook, tmp_path / "import.ipynb")
    saved = dict(os.environ)
    try:
        hooks.on_startup("build", dirty=False)
        page = nbconvert2.nb2html(str(tmp_path / "import.ipynb"), execute=True)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    stderr = [text.strip() for text in hooks._STDERR.findall(page)]
    assert not any(stderr), stderr
