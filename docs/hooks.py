"""mkdocs hooks of the documentation site (declared under `hooks:` in mkdocs.yml).

- The notebooks run in their small mode: `SST_NOTEBOOK_SMALL=1` is set before mkdocs-jupyter
  starts their kernels (which inherit the environment), as `tests/test_notebooks.py` does.
- MathJax 3 is served by the site itself, copied from the `django-static-mathjax` package of the
  `docs` extra, so that equations render offline and nothing is fetched from a CDN.
- Notebook pages: the MathJax 2 script that nbconvert's template loads from a CDN is removed (the
  site's MathJax 3 typesets every page; two MathJax versions on one page conflict).
- Notebook links to the docs: a notebook links a docs page by its path from `notebooks/`, such as
  `../docs/model.md#time-scales`, which opens the file from a clone, in JupyterLab (started at
  the clone's root) and on GitHub; on the site the link becomes the page's URL. A link to a page
  or an anchor that does not exist is a warning, so an error of the strict build.
- No warning cells: tqdm warns "IProgress not found" when it is imported in a kernel without
  ipywidgets (the docs extra has none, and sst shows no progress bar there); the kernels run with
  that warning filtered, and any other warning printed by an executed notebook fails the build.
- Benchmarks page: each `<!-- bench:NAME -->` marker becomes the tables of the committed result
  file `docs/benchmarks/NAME.json` (rendered by `docs/scripts/bench_tables.py`).
"""

from __future__ import annotations

import html
import importlib.util
import logging
import os
import pathlib
import re

from mkdocs.structure.files import File

log = logging.getLogger("mkdocs.hooks.sst")

DOCS = pathlib.Path(__file__).resolve().parent
MATHJAX_DEST = "_static/mathjax/tex-svg.js"


# A PYTHONWARNINGS entry (action:message): the kernels that execute the notebooks inherit it.
_IGNORE_IPROGRESS = "ignore:IProgress not found"


def on_startup(command, dirty):
    os.environ.setdefault("SST_NOTEBOOK_SMALL", "1")
    filters = [f for f in os.environ.get("PYTHONWARNINGS", "").split(",") if f]
    if _IGNORE_IPROGRESS not in filters:
        os.environ["PYTHONWARNINGS"] = ",".join([*filters, _IGNORE_IPROGRESS])


def _mathjax_source() -> pathlib.Path:
    spec = importlib.util.find_spec("mathjax")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "MathJax is missing: install the docs extra (pip install -e '.[docs]'), which "
            "brings it as the django-static-mathjax package."
        )
    path = pathlib.Path(spec.submodule_search_locations[0]) / "static/mathjax/es5/tex-svg.js"
    if not path.is_file():
        raise RuntimeError(f"MathJax package found but {path} is missing.")
    return path


def on_files(files, config):
    files.append(File.generated(config, MATHJAX_DEST, abs_src_path=str(_mathjax_source())))
    return files


# In a notebook's HTML: a link to a docs page by its path from notebooks/.
_DOCS_LINK = re.compile(r'href="\.\./docs/([^"#]+\.md)(?:#([^"]*))?"')
# Explicit anchors of the docs pages, `## Title {#anchor}`.
_ANCHOR = re.compile(r"\{#([A-Za-z0-9_-]+)\}")


def _docs_link(match, page, files) -> str:
    path, anchor = match.group(1), match.group(2)
    target = files.get_file_from_path(path)
    if target is None or not target.src_uri.endswith(".md"):
        log.warning("%s links ../docs/%s, which is not a page of the site", page.file.src_uri, path)
        return match.group(0)
    if anchor and anchor not in _ANCHOR.findall(pathlib.Path(target.abs_src_path).read_text()):
        log.warning(
            "%s links %s#%s, an anchor that page does not have", page.file.src_uri, path, anchor
        )
    url = target.url_relative_to(page.file)
    return f'href="{url}{"#" + anchor if anchor else ""}"'


# nbconvert's stderr outputs: <div class="... " data-mime-type="application/vnd.jupyter.stderr">
_STDERR = re.compile(
    r'data-mime-type="application/vnd\.jupyter\.stderr"(?:\s[^>]*)?>(.*?)</div>', re.S | re.I
)


def on_page_content(content, page, config, files):
    if not page.file.src_uri.endswith(".ipynb"):
        return content
    content = _DOCS_LINK.sub(lambda m: _docs_link(m, page, files), content)
    for text in _STDERR.findall(content):
        text = html.unescape(re.sub(r"<[^>]+>", "", text)).strip()
        if "Warning" in text:
            log.warning("%s shows a warning cell: %s", page.file.src_uri, text[:300])
    return content


_BENCH_MARKER = re.compile(r"<!-- bench:([A-Za-z0-9_]+) -->")


def _bench_tables():
    path = DOCS / "scripts" / "bench_tables.py"
    spec = importlib.util.spec_from_file_location("bench_tables", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def on_page_markdown(markdown, page, config, files):
    if not _BENCH_MARKER.search(markdown):
        return markdown
    tables = _bench_tables()
    return _BENCH_MARKER.sub(
        lambda m: tables.render(DOCS / "benchmarks" / f"{m.group(1)}.json"), markdown
    )


_CDN_MATHJAX = re.compile(r'<script src="https://[^"]*mathjax[^"]*">\s*</script>', re.I)


def on_post_page(output, page, config):
    if page.file.src_uri.endswith(".ipynb"):
        output = _CDN_MATHJAX.sub("", output)
    return output
