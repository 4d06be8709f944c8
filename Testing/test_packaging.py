"""What a 3D Slicer build installs and what the module installs into Slicer's Python match the repository."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import tomllib

from SegShapExplainLib.dependencies import distributionName, readRequirements, requirementsFile

ROOT = Path(__file__).resolve().parents[1]


def _cmake_list(name: str) -> list[str]:
    text = (ROOT / "SegShapExplain" / "CMakeLists.txt").read_text()
    body = re.search(rf"set\({name}\n(.*?)\n\s*\)", text, re.S).group(1)
    return [line.strip().replace("${MODULE_NAME}", "SegShapExplain") for line in body.splitlines() if line.strip()]


def _tracked(folder: str) -> set[str]:
    files = subprocess.run(["git", "ls-files", folder], cwd=ROOT, capture_output=True, text=True, check=True)
    return {line for line in files.stdout.splitlines() if line}


def test_cmake_lists_every_module_script():
    scripts = {f"SegShapExplain/{path}" for path in _cmake_list("MODULE_PYTHON_SCRIPTS")}
    tracked = {path for path in _tracked("SegShapExplain") if path.endswith(".py")}
    assert scripts == tracked


def test_cmake_lists_every_resource():
    resources = {f"Resources/{path}" for path in _cmake_list("MODULE_RESOURCES")}
    assert resources == _tracked("Resources")


def test_extension_metadata_declares_pytorch_and_its_urls():
    text = (ROOT / "CMakeLists.txt").read_text()
    for field in ("HOMEPAGE", "CATEGORY", "CONTRIBUTORS", "DESCRIPTION", "ICONURL", "SCREENSHOTURLS"):
        assert re.search(rf'set\(EXTENSION_{field} "[^"]+"\)', text), field
    assert 'set(EXTENSION_DEPENDS "PyTorch")' in text


def test_slicer_requirements_are_the_engine_s_dependencies_without_torch():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    engine = {distributionName(r) for r in project["dependencies"]} - {"torch", "numpy"}
    slicer_side = {distributionName(r) for r in readRequirements(requirementsFile())}
    assert slicer_side - {"einops"} == engine  # einops: SwinUNETR's, a test extra of the engine


def _panel() -> tuple[str, str]:
    return (
        (ROOT / "Resources" / "UI" / "SegShapExplain.ui").read_text(),
        (ROOT / "SegShapExplain" / "SegShapExplain.py").read_text(),
    )


def test_panel_widgets_bind_to_parameters_that_exist():
    import ast

    ui, module = _panel()
    bound = set(re.findall(r'<property name="SlicerParameterName" stdset="0">\s*<string>(\w+)</string>', ui))
    tree = ast.parse(module)
    wrapper = next(
        node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "SegShapExplainParameterNode"
    )
    fields = {statement.target.id for statement in wrapper.body if isinstance(statement, ast.AnnAssign)}
    assert bound and bound <= fields


def test_every_widget_the_module_uses_is_in_the_ui():
    ui, module = _panel()
    widgets = set(re.findall(r'<widget class="\w+" name="(\w+)">', ui))
    used = set(re.findall(r"self\.ui\.(\w+)", module))
    assert used and used <= widgets, used - widgets


def test_missing_packages_are_found_without_importing_them(tmp_path):
    from SegShapExplainLib.dependencies import installMessage, missingPackages

    assert missingPackages() == []  # this environment has everything the worker needs
    wanted = tmp_path / "requirements.txt"
    wanted.write_text("# comment\nscipy>=1.10\nno-such-package-segshap>=1  # not installed\npyyaml\n")
    assert missingPackages(wanted) == ["no-such-package-segshap>=1"]
    assert "no-such-package-segshap>=1" in installMessage(["torch", "no-such-package-segshap>=1"])


def _engine_imports() -> dict[str, set[str]]:
    """Each module of ``segshap`` and the ``segshap`` modules it imports, at any depth of its code."""
    import ast

    package = ROOT / "SegShapExplain" / "segshap"
    paths = {}
    for path in package.rglob("*.py"):
        parts = path.relative_to(package.parent).with_suffix("").parts
        paths[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for name, path in paths.items():
        here = tuple(name.split(".")) if path.name == "__init__.py" else tuple(name.split(".")[:-1])
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = here[: len(here) - node.level + 1]
                target = ".".join(base + tuple(node.module.split(".") if node.module else ()))
                modules = {f"{target}.{alias.name}" for alias in node.names} & paths.keys()
                # `from . import module` needs the module; the package is already being imported.
                imported.update(modules if modules and not node.module else {target, *modules})
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("segshap"):
                imported.add(node.module)
            elif isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names if alias.name.startswith("segshap"))
        graph[name] = imported
    return {name: {m for m in imported if m in graph and m != name} for name, imported in graph.items()}


def test_no_import_circles_in_the_engine():
    graph = _engine_imports()
    # A package's __init__ re-exports its modules: importing it from one of them is a circle through the package.
    state, circles = {}, []

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for imported in sorted(graph[module]):
            if state.get(imported) == "open":
                circles.append(path[path.index(imported) :] + [imported])
            elif imported not in state:
                visit(imported, path + [imported])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert circles == []


def test_the_slicer_side_and_the_process_helper_load_without_torch():
    """The Lib runs in 3D Slicer's Python before torch is installed: the one engine module it imports
    (segshap.processes) must not pull torch in through segshap's package."""
    code = (
        "import sys; import SegShapExplainLib, segshap.processes, segshap; "
        "assert 'torch' not in sys.modules, sorted(sys.modules)"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "SegShapExplain")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr


def test_every_option_of_the_panel_has_a_tooltip_and_explain_is_the_default_button():
    import xml.etree.ElementTree as ElementTree

    root = ElementTree.fromstring(_panel()[0])
    inputs = ("QComboBox", "QSpinBox", "QDoubleSpinBox", "QCheckBox", "QPushButton", "qMRMLNodeComboBox")
    inputs += ("ctkPathLineEdit", "qMRMLSegmentSelectorWidget", "qMRMLTableView")
    without = [
        widget.get("name")
        for widget in root.iter("widget")
        if widget.get("class") in inputs
        and widget.get("name") != "explainButton"  # its tooltip is set by the panel's rules (panelState)
        and not any(
            p.get("name") == "toolTip" and (p.findtext("string") or "").strip() for p in widget.findall("property")
        )
    ]
    assert without == []
    explain = next(w for w in root.iter("widget") if w.get("name") == "explainButton")
    assert any(p.get("name") == "default" and p.findtext("bool") == "true" for p in explain.findall("property"))


def test_the_demo_is_listed_in_sample_data_from_a_local_file():
    from SegShapExplainLib.resources import HELP_TEXT, demoSampleData

    sample = demoSampleData()
    assert sample["uris"].startswith("file://") and Path(sample["uris"][len("file://") :]).is_file()
    assert Path(sample["thumbnailFileName"]).is_file() and sample["loadFileType"] == "VolumeFile"
    assert "Reading the result" in HELP_TEXT and "Limits" in HELP_TEXT
