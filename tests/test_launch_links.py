"""Every launch link opens a notebook that can run where it opens (book venv; no build needed).

The links are those of each page's "Run it yourself" box (`pipeline.merge`) and of each notebook's
own first cell (`pipeline.split`). Each must point, at the repository and branch that _config.yml
names, to a notebook that git tracks (so a clean clone, and GitHub, has it), whose kernelspec Colab
accepts, and whose first code cell installs what that platform lacks.
"""

import re
import subprocess
import sys

import nbformat
import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "tools"))
import pipeline  # noqa: E402

PLATFORMS = {"colab": "https://colab.research.google.com/github/",
             "studio-lab": "https://studiolab.sagemaker.aws/import/github/"}
LINK = re.compile(r"https://(?:colab\.research\.google\.com|studiolab\.sagemaker\.aws/import)"
                  r"/github/[^)\s]+")
REPOSITORY = pipeline.book_config()["repository"]
GITHUB = REPOSITORY["url"].removeprefix("https://github.com/").rstrip("/")
def launch_texts() -> list[str]:
    texts = []
    for source in pipeline.chapter_sources():
        texts.append(next(cell.source for cell in pipeline.merge(source).cells
                          if cell.id == "launch"))
        for framework in pipeline.frameworks_in(source):
            path = pipeline.notebook_path(source, framework)
            if path.exists():
                texts.append(nbformat.read(path, as_version=4).cells[0].source)
    return texts


LINKS = sorted({link for text in launch_texts() for link in LINK.findall(text)})


def case(link: str):
    platform = next(name for name, prefix in PLATFORMS.items() if link.startswith(prefix))
    return pytest.param(platform, link, id=link.removeprefix(PLATFORMS[platform]) + f"@{platform}")


def test_every_notebook_has_colab_and_studio_lab_links():
    for source in pipeline.chapter_sources():
        for framework in pipeline.frameworks_in(source):
            assert pipeline.colab_url(source, framework) in LINKS
            assert pipeline.studio_lab_url(source, framework) in LINKS


def first_code_cell(path) -> tuple[dict, str]:
    notebook = nbformat.read(path, as_version=4)
    return notebook.metadata, next(c.source for c in notebook.cells if c.cell_type == "code")


@pytest.mark.parametrize("platform, link", [case(link) for link in LINKS])
def test_launch_link_opens_a_committed_notebook_that_installs_what_it_needs(platform, link):
    where = link.removeprefix(PLATFORMS[platform])
    assert where.startswith(f"{GITHUB}/blob/{REPOSITORY['branch']}/"), \
        f"{link} is not at {REPOSITORY['url']}, branch {REPOSITORY['branch']} (_config.yml)"
    relative = where.removeprefix(f"{GITHUB}/blob/{REPOSITORY['branch']}/")
    tracked = subprocess.run(["git", "ls-files", "--error-unmatch", relative], cwd=ROOT,
                             capture_output=True).returncode == 0
    assert (ROOT / relative).exists() and tracked, f"{relative} is not in the repository"

    metadata, install = first_code_cell(ROOT / relative)
    framework = metadata["d2l_bn"]["framework"]
    assert metadata["kernelspec"] == pipeline.KERNELSPEC, "Colab rejects other kernel names"
    from_here = f"@ git+{REPOSITORY['url']}@{REPOSITORY['branch']}"
    assert "pip" in install and from_here in install, f"does not install d2l_bn {from_here}"
    if f"d2l_bn[{framework}]" in install:  # a framework may only be installed where it is missing
        assert "find_spec(" in install.split(f"d2l_bn[{framework}]")[0]
        for module in pipeline.MODULES[framework]:  # each module the notebook imports is checked
            assert re.search(rf"""["']{module}["']""", install.split(f"d2l_bn[{framework}]")[0]), \
                f"the install cell does not check whether {module} is there"
    if platform == "colab" and framework == "mxnet":
        # Colab's Python (3.12+) cannot run MXNet 1.9.1: the cell must stop and say what to do.
        assert "sys.version_info >= (3, 12)" in install and "SystemExit" in install
    if platform == "studio-lab":
        assert f"d2l_bn[{framework}] {from_here}" in install, \
            f"Studio Lab's default environment may lack {framework}: install d2l_bn[{framework}]"
