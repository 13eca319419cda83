"""Render each run of framework-tagged notebook cells as one set of synced framework tabs.

The merged notebook of a page holds, between two markdown cells, the code cells of every framework
(tagged `torch`, `mxnet`, `jax` or `tensorflow`) with their stored outputs. myst-nb renders each
cell as a container with a `tag_<framework>` class; this transform wraps every run of such
containers in a sphinx-design tab set whose tabs share the sync group `framework`, so choosing a
framework in one tab set switches them all. (A MyST `{code-cell}` cannot be nested in a `tab-item`
directive, hence a transform over the rendered cells.)
"""

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.transforms import SphinxTransform
from sphinx_design.shared import create_component

FRAMEWORKS = {"torch": "PyTorch", "mxnet": "MXNet", "jax": "JAX", "tensorflow": "TensorFlow"}
SYNC_GROUP = "framework"


def framework_of(node: nodes.Node) -> str | None:
    if not isinstance(node, nodes.container) or node.get("nb_element") != "cell_code":
        return None
    tags = [cls.removeprefix("tag_") for cls in node["classes"] if cls.startswith("tag_")]
    found = [tag for tag in tags if tag in FRAMEWORKS]
    return found[0] if found else None


def tab_set(cells: list[nodes.container]) -> nodes.container:
    items = []
    for framework, label in FRAMEWORKS.items():
        mine = [cell for cell in cells if framework_of(cell) == framework]
        content = mine or [nodes.paragraph(
            "", "", nodes.emphasis("", f"The {label} version of this code is not written yet."))]
        title = nodes.rubric(label, nodes.Text(label), classes=["sd-tab-label"],
                             sync_id=framework, sync_group=SYNC_GROUP)
        body = create_component("tab-content", classes=["sd-tab-content"], children=content)
        items.append(create_component("tab-item", classes=["sd-tab-item", f"framework-{framework}"],
                                      children=[title, body]))
    return create_component("tab-set", classes=["sd-tab-set", "framework-tabs"], children=items)


class FrameworkTabs(SphinxTransform):
    default_priority = 500

    def apply(self, **kwargs) -> None:
        parents = {cell.parent for cell in self.document.findall(framework_of)
                   if framework_of(cell)}
        for parent in parents:
            children, run = [], []
            for child in parent.children:
                if framework_of(child):
                    run.append(child)
                    continue
                if run:
                    children.append(tab_set(run))
                    run = []
                children.append(child)
            if run:
                children.append(tab_set(run))
            parent.children = []
            parent.extend(children)


def setup(app: Sphinx) -> dict:
    app.setup_extension("sphinx_design")
    app.add_transform(FrameworkTabs)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
