"""Serve MathJax with the site, so that equations render offline.

Jupyter Book 1 loads MathJax 3 from a CDN, so a reader without internet sees raw TeX. `make mathjax`
fetches MathJax 3.2.2 from npm into a folder that is not committed; `local_mathjax_dir` in
_config.yml names its `es5/` folder, which this extension copies to `_static/mathjax/` in the build,
where `mathjax_path` points. MathJax 3 loads its fonts and TeX extensions relative to its own
script, so rendering asks no other host for anything (MathJax 4 would fetch fonts from a CDN).
"""

import shutil
from pathlib import Path

from sphinx.application import Sphinx
from sphinx.errors import ConfigError


def source(app: Sphinx) -> Path:
    return Path(app.srcdir) / app.config.local_mathjax_dir


def check_fetched(app: Sphinx) -> None:
    # Fail before the build rather than ship pages whose equations never render.
    if app.builder.format == "html" and not (source(app) / "tex-mml-chtml.js").exists():
        raise ConfigError(f"MathJax not found in {source(app)}: run `make mathjax`")


def copy_into_build(app: Sphinx, exception: Exception | None) -> None:
    if exception is None and app.builder.format == "html":
        shutil.copytree(source(app), Path(app.outdir) / "_static" / "mathjax", dirs_exist_ok=True)


def setup(app: Sphinx) -> dict:
    app.add_config_value("local_mathjax_dir", "", "html")
    app.connect("builder-inited", check_fetched)
    app.connect("build-finished", copy_into_build)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
