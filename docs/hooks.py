"""mkdocs hooks of the documentation site (declared under `hooks:` in mkdocs.yml).

- The notebooks run in their small mode: `SST_NOTEBOOK_SMALL=1` is set before mkdocs-jupyter
  starts their kernels (which inherit the environment), as `tests/test_notebooks.py` does.
- MathJax 3 is served by the site itself, copied from the `django-static-mathjax` package of the
  `docs` extra, so that equations render offline and nothing is fetched from a CDN.
- Notebook pages: the MathJax 2 script that nbconvert's template loads from a CDN is removed (the
  site's MathJax 3 typesets every page; two MathJax versions on one page conflict).
- Benchmarks page: each `<!-- bench:NAME -->` marker becomes the tables of the committed result
  file `docs/benchmarks/NAME.json` (rendered by `docs/scripts/bench_tables.py`).
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import re

from mkdocs.structure.files import File

DOCS = pathlib.Path(__file__).resolve().parent
MATHJAX_DEST = "_static/mathjax/tex-svg.js"


def on_startup(command, dirty):
    os.environ.setdefault("SST_NOTEBOOK_SMALL", "1")


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
