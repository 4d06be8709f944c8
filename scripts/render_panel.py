"""Render the Slicer module's panel headless into ``docs/panel.png``, as a user sees it after explaining the demo.

3D Slicer cannot be installed here, so the panel is drawn by plain Qt (PySide6): ``Resources/UI/SegShapExplain.ui`` is
loaded with ``QUiLoader``, the MRML and CTK widgets it declares (its ``<customwidgets>``) are stand-ins made of plain
Qt widgets (a collapsible section with its title bar, a path box with "...", a node combo box showing a node's name
or its ``noneDisplay``, the segment selector's two combo boxes, a table), and the panel is filled as
``SegShapExplain.py`` fills it:

- the parameters' defaults are read from ``SegShapExplainParameterNode`` in ``SegShapExplain.py`` (its source, by
  ``ast``: the module itself needs Slicer); an enum's combo box lists the labels of its members
  (``SegShapExplainLib.settings``, e.g. ``FeatureKind.label``);
- the scene is the demo of ``Resources/Demo/demo.json``: its MRI as the input volume (the name the Sample Data module
  gives it), its model, its target class, and a box as the region (the demo's ``roi``; the name *Place a box* gives);
- ``SegShapExplainLib.panel.panelState`` decides what is enabled, shown and said, applied to the widgets by the very
  assignments of ``SegShapExplainWidget.updateButtons`` (read from its source); the model line is
  ``panel.modelStatus``'s message (the sentence on where the model runs, which the worker adds once it has described
  the model, is not there);
- the status line and the results table come from a real run of ``segshap demo`` (the same case and settings): the
  status is ``"Done: "`` and the worker's summary line, as ``onExplained`` shows it; the table lists the features by
  |value| with the columns of ``SegShapExplainLib/results.py``'s ``TABLE_COLUMNS``, as ``qMRMLTableView`` shows a
  vtkTable (6 significant digits, columns sized to their contents, at least 60 px). The values are the same on
  every run (seed 0); the time in the status is the run's.

The Options section, collapsed in the panel at first, is drawn expanded so that every option shows. The model path
is shown under ``~/SegShapExplain/`` (a checkout in a home folder), so that the picture does not depend on where the
repository lies. What the real widgets draw differently (Slicer's own style and icons, the module's header with Help
& Acknowledgement) is not drawn.

Set-up (once; PySide6 stays out of the project's ``.venv``, whose packages ``scripts/constraints.txt`` pins)::

    python3 -m venv .venv-docs && .venv-docs/bin/pip install PySide6-Essentials

Run (from any Python: the script goes on in ``.venv-docs`` when its own Python lacks PySide6)::

    python3 scripts/render_panel.py                       # runs `segshap demo` (the project's .venv) first
    python3 scripts/render_panel.py --demo-out DIR --summary "LINE"   # reuse a `segshap demo --out DIR` run

``QT_QPA_PLATFORM`` defaults to ``offscreen``: no display is needed.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import types
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODULE = ROOT / "SegShapExplain"
UI_FILE = ROOT / "Resources" / "UI" / "SegShapExplain.ui"
DOCS_VENV = ROOT / ".venv-docs"
OUTPUT = ROOT / "docs" / "panel.png"
SHOWN_ROOT = "~/SegShapExplain"
"""Where the picture says the repository is (the model path box)."""
WIDTH = 500
"""The module panel's width in pixels, about what 3D Slicer gives it (more if the widgets need more)."""
VISIBLE_ROWS = 8
"""Table rows shown without scrolling."""

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
try:
    from PySide6.QtCore import Property as QtProperty
    from PySide6.QtCore import QBuffer, QByteArray, QIODevice, QRect, Qt, qInstallMessageHandler
    from PySide6.QtGui import QFont, QFontDatabase
    from PySide6.QtUiTools import QUiLoader
    from PySide6.QtWidgets import (
        QAbstractSpinBox,
        QApplication,
        QCheckBox,
        QComboBox,
        QHBoxLayout,
        QLabel,
        QPushButton,
        QSizePolicy,
        QStyle,
        QStyleOptionButton,
        QStylePainter,
        QTableWidget,
        QTableWidgetItem,
        QToolButton,
        QVBoxLayout,
        QWidget,
    )
except ImportError:
    python = DOCS_VENV / "bin" / "python"
    if python.exists() and Path(sys.executable).absolute() != python.absolute():
        os.execv(str(python), [str(python), __file__, *sys.argv[1:]])
    sys.exit(
        f"render_panel.py needs PySide6, which {sys.executable} lacks. Make its own environment once (PySide6 stays "
        "out of the project's .venv):\n"
        f"    python3 -m venv {DOCS_VENV.relative_to(ROOT)} && {DOCS_VENV.relative_to(ROOT)}/bin/pip install "
        "PySide6-Essentials\nthen run this script again (with any Python: it goes on in .venv-docs)."
    )


# ---------------------------------------------------------------------------------------------- the module's code


def importLib() -> types.SimpleNamespace:
    """``SegShapExplainLib``'s Qt- and Slicer-free modules (settings, panel, resources), without running its
    ``__init__`` (which imports the logic, hence Slicer)."""
    sys.path.insert(0, str(MODULE))
    package = types.ModuleType("SegShapExplainLib")
    package.__path__ = [str(MODULE / "SegShapExplainLib")]
    sys.modules["SegShapExplainLib"] = package
    return types.SimpleNamespace(
        **{name: importlib.import_module(f"SegShapExplainLib.{name}") for name in ("settings", "panel", "resources")}
    )


def _classDef(tree: ast.Module, name: str) -> ast.ClassDef:
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == name:
            return node
    raise LookupError(f"class {name} not found")


def parameterDefaults(lib) -> dict:
    """``SegShapExplainParameterNode``'s fields and defaults, from ``SegShapExplain.py``'s source (``None`` for a
    node reference)."""
    tree = ast.parse((MODULE / "SegShapExplain.py").read_text())
    settings = lib.settings
    namespace = {
        name: getattr(settings, name)
        for name in ("FeatureKind", "ValueFunction", "Baseline", "Device", "OutlineStyle", "OutputMode")
    }
    namespace |= {"DEMO": lib.resources.demoCase(), "pathlib": __import__("pathlib")}
    defaults = {}
    for statement in _classDef(tree, "SegShapExplainParameterNode").body:
        if isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name):
            value = statement.value
            defaults[statement.target.id] = (
                None if value is None else eval(compile(ast.Expression(value), "<default>", "eval"), namespace)
            )
    return defaults


def updateButtonsAssignments() -> list[tuple[str, str, str]]:
    """The ``self.ui.WIDGET.PROPERTY = state.FIELD`` assignments of ``SegShapExplainWidget.updateButtons``."""
    tree = ast.parse((MODULE / "SegShapExplain.py").read_text())
    method = next(
        node
        for node in _classDef(tree, "SegShapExplainWidget").body
        if isinstance(node, ast.FunctionDef) and node.name == "updateButtons"
    )
    found = []
    for node in ast.walk(method):
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1):
            continue
        target, value = node.targets[0], node.value
        if (
            isinstance(target, ast.Attribute)
            and isinstance(target.value, ast.Attribute)
            and isinstance(target.value.value, ast.Attribute)
            and target.value.value.attr == "ui"
            and isinstance(value, ast.Attribute)
            and isinstance(value.value, ast.Name)
            and value.value.id == "state"
        ):
            found.append((target.value.attr, target.attr, value.attr))
    if not found:
        raise LookupError("no `self.ui.WIDGET.PROPERTY = state.FIELD` in SegShapExplainWidget.updateButtons")
    return found


def tableColumns() -> tuple[str, ...]:
    """``TABLE_COLUMNS`` of ``SegShapExplainLib/results.py`` (which imports Slicer), from its source."""
    tree = ast.parse((MODULE / "SegShapExplainLib" / "results.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "TABLE_COLUMNS" for t in node.targets):
            return tuple(ast.literal_eval(node.value))
    raise LookupError("TABLE_COLUMNS not found in results.py")


# ---------------------------------------------------------------------------------------------- stand-in widgets


class _Header(QPushButton):
    """The title bar of a collapsible section: a button with the indicator arrow and the title on the left."""

    def __init__(self, section: QWidget) -> None:
        super().__init__(section)
        self.section = section
        self.setFocusPolicy(Qt.NoFocus)

    def paintEvent(self, event) -> None:
        painter = QStylePainter(self)
        option = QStyleOptionButton()
        self.initStyleOption(option)
        option.text = ""
        painter.drawControl(QStyle.CE_PushButton, option)
        arrow = QStyleOptionButton(option)
        size = 9
        arrow.rect = QRect(8, (self.height() - size) // 2, size, size)
        collapsed = self.section.property("collapsed")
        painter.drawPrimitive(QStyle.PE_IndicatorArrowRight if collapsed else QStyle.PE_IndicatorArrowDown, arrow)
        textRect = self.rect().adjusted(8 + size + 6, 0, -6, 0)
        painter.drawItemText(
            textRect, Qt.AlignLeft | Qt.AlignVCenter, self.palette(), self.isEnabled(), self.section.property("text")
        )


class ctkCollapsibleButton(QWidget):  # the .ui's class names
    """A section with a title bar; its contents are the layout the .ui gives it, under the bar."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self._text = ""
        self._collapsed = False
        self.header = _Header(self)

    def _getText(self) -> str:
        return self._text

    def _setText(self, text: str) -> None:
        self._text = text
        self.header.update()

    text = QtProperty(str, _getText, _setText)

    def _getCollapsed(self) -> bool:
        return self._collapsed

    def _setCollapsed(self, collapsed: bool) -> None:
        self._collapsed = collapsed
        self.arrange()

    collapsed = QtProperty(bool, _getCollapsed, _setCollapsed)

    def headerHeight(self) -> int:
        return self.header.sizeHint().height() + 2

    def arrange(self) -> None:
        """Put the contents under the title bar; hide them when collapsed (and show again those it hid)."""
        layout = self.layout()
        if layout is None:
            return
        margins = layout.contentsMargins()
        layout.setContentsMargins(margins.left(), self.headerHeight() + 4, margins.right(), margins.bottom())
        for child in self.findChildren(QWidget, options=Qt.FindDirectChildrenOnly):
            if child is self.header:
                continue
            if self._collapsed and not child.isHidden():
                child.setProperty("_collapsedAway", True)
                child.hide()
            elif not self._collapsed and child.property("_collapsedAway"):
                child.setProperty("_collapsedAway", False)
                child.show()
        self.setMaximumHeight(self.headerHeight() if self._collapsed else 16777215)
        self.header.update()

    def resizeEvent(self, event) -> None:
        self.header.setGeometry(0, 0, self.width(), self.headerHeight())
        super().resizeEvent(event)


class qMRMLWidget(QWidget):
    """The panel's top widget (a plain widget with a scene, here none)."""


class qMRMLNodeComboBox(QComboBox):
    """A combo box showing the current node's name, or ``noneDisplay`` ("None") when there is none."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self._noneDisplay = "None"
        self.setCurrentNodeName(None)
        self.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Fixed)

    def _getNoneDisplay(self) -> str:
        return self._noneDisplay

    def _setNoneDisplay(self, text: str) -> None:
        self._noneDisplay = text
        self.setCurrentNodeName(None)

    noneDisplay = QtProperty(str, _getNoneDisplay, _setNoneDisplay)

    def setCurrentNodeName(self, name: str | None) -> None:
        self.clear()
        self.addItem(name if name else self._noneDisplay)


class ctkPathLineEdit(QWidget):
    """A path in an editable combo box (with its history) and the "..." browse button."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(2)
        self.comboBox = QComboBox(self)
        self.comboBox.setEditable(True)
        self.comboBox.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Fixed)
        self.browseButton = QToolButton(self)
        self.browseButton.setText("...")
        layout.addWidget(self.comboBox)
        layout.addWidget(self.browseButton)

    def setCurrentPath(self, path: str) -> None:
        """Show ``path``; like ctk, the box is as wide as the path unless the .ui sets ``sizeAdjustPolicy`` to
        ``ctkPathLineEdit::AdjustToMinimumContentsLength`` (then ``minimumContentsLength`` characters)."""
        if str(self.property("sizeAdjustPolicy") or "").endswith("AdjustToMinimumContentsLength"):
            self.comboBox.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
            self.comboBox.setMinimumContentsLength(int(self.property("minimumContentsLength") or 0))
        self.comboBox.clear()
        self.comboBox.addItem(path)
        self.comboBox.lineEdit().setCursorPosition(0)


class qMRMLSegmentSelectorWidget(QWidget):
    """The segmentation node's combo box, and below it "Segment:" with the segment's (disabled without a node)."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(2)
        self.nodeComboBox = qMRMLNodeComboBox(self)
        layout.addWidget(self.nodeComboBox)
        row = QHBoxLayout()
        row.setContentsMargins(4, 0, 0, 0)
        row.setSpacing(4)
        row.addWidget(QLabel("Segment:", self))
        self.segmentComboBox = QComboBox(self)
        self.segmentComboBox.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Fixed)
        row.addWidget(self.segmentComboBox)
        layout.addLayout(row)
        self.setCurrentNodeName(None)

    def setCurrentNodeName(self, name: str | None, segment: str | None = None) -> None:
        self.nodeComboBox.setCurrentNodeName(name)
        self.segmentComboBox.clear()
        if segment:
            self.segmentComboBox.addItem(segment)
        self.segmentComboBox.setEnabled(bool(name))


class qMRMLTableView(QTableWidget):
    """A read-only table of a vtkTable: column names as headers, rows numbered, cells as ``vtkVariant.ToString``."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.horizontalHeader().setStretchLastSection(False)
        self.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Expanding)
        self.setEditTriggers(QTableWidget.NoEditTriggers)

    def setTable(self, columns: tuple[str, ...], rows: list[tuple]) -> None:
        self.setColumnCount(len(columns))
        self.setRowCount(len(rows))
        self.setHorizontalHeaderLabels(list(columns))
        for r, row in enumerate(rows):
            for c, value in enumerate(row):
                self.setItem(r, c, QTableWidgetItem(variantText(value)))
        self.horizontalHeader().setMinimumSectionSize(60)
        self.resizeColumnsToContents()

    def showRows(self, count: int) -> None:
        """Make the view just tall enough for ``count`` rows (and the scroll bar under them)."""
        height = 2 * self.frameWidth() + self.horizontalHeader().sizeHint().height()
        height += sum(self.rowHeight(r) for r in range(min(count, self.rowCount())))
        if self.horizontalHeader().length() + self.verticalHeader().sizeHint().width() > self.viewport().width():
            height += self.style().pixelMetric(QStyle.PM_ScrollBarExtent)
        self.setMinimumHeight(height)
        self.setMaximumHeight(height)


def variantText(value) -> str:
    """A cell as ``vtkVariant::ToString`` writes it (an ostream's defaults: 6 significant digits)."""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.6g}"
    return str(value)


STAND_INS = {
    cls.__name__: cls
    for cls in (
        ctkCollapsibleButton,
        qMRMLWidget,
        qMRMLNodeComboBox,
        ctkPathLineEdit,
        qMRMLSegmentSelectorWidget,
        qMRMLTableView,
    )
}


def _unknownStandIn(name: str) -> type:
    """A labelled placeholder for a custom widget class this script does not know yet."""

    def __init__(self, parent=None):
        QLabel.__init__(self, f"[{name}]", parent)

    return type(name, (QLabel,), {"__init__": __init__})


def loadPanel() -> QWidget:
    """The .ui with stand-ins for its custom widgets. Its connections (the MRML scene to the selectors) are
    dropped, and the set and enum properties of custom widgets that the stand-ins lack (``ctkPathLineEdit::Dirs|...``)
    become strings: dynamic properties, like the other properties the stand-ins do not declare."""
    tree = ET.parse(UI_FILE)
    root = tree.getroot()
    for connections in root.findall("connections"):
        root.remove(connections)
    classes = {
        name: STAND_INS.get(name) or _unknownStandIn(name)
        for name in (element.findtext("class") for element in root.iter("customwidget"))
    }
    for widget in root.iter("widget"):
        standIn = classes.get(widget.get("class"))
        if standIn is None:
            continue
        for prop in widget.findall("property"):
            if standIn.staticMetaObject.indexOfProperty(prop.get("name")) >= 0:
                continue  # a property of the stand-in's Qt base class (sizeAdjustPolicy of a combo box...)
            for kind in ("set", "enum"):
                value = prop.find(kind)
                if value is not None:
                    value.tag = "string"
    loader = QUiLoader()
    for standIn in classes.values():
        loader.registerCustomWidget(standIn)
    data = QByteArray(ET.tostring(root, encoding="utf-8"))
    buffer = QBuffer(data)
    buffer.open(QIODevice.ReadOnly)
    panel = loader.load(buffer)
    if panel is None:
        raise RuntimeError(f"QUiLoader could not load {UI_FILE}: {loader.errorString()}")
    return panel


# ---------------------------------------------------------------------------------------------- the demo's results


def segshapCommand() -> str:
    for candidate in (ROOT / ".venv" / "bin" / "segshap", shutil.which("segshap")):
        if candidate and Path(candidate).exists():
            return str(candidate)
    sys.exit(
        "render_panel.py: `segshap` was not found (neither .venv/bin/segshap nor on PATH): run `bash scripts/demo.sh` "
        "once, or pass --demo-out DIR (a `segshap demo --out DIR` run) and --summary."
    )


def runDemo(folder: Path) -> str:
    """Run ``segshap demo`` into ``folder``; its summary line (what the worker's ``done`` event carries)."""
    command = [segshapCommand(), "demo", "--out", str(folder), "--quiet"]
    print("Running", " ".join(command), "(about half a minute)...", file=sys.stderr)
    run = subprocess.run(command, capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"`segshap demo` failed (exit code {run.returncode}):\n{run.stderr}")
    printed = run.stdout
    for line in printed.splitlines():
        if line.startswith("Explained "):
            return line
    raise RuntimeError(f"`segshap demo` printed no summary line:\n{printed}")


def workerSummary(line: str) -> str:
    """``segshap demo``'s "Explained white_matter: SUMMARY" line, or the summary itself, as the worker gives it."""
    line = line.strip()
    if line.startswith("Explained ") and ": " in line:
        return line.split(": ", 1)[1]
    return line


def tableRows(report: dict, target: int = 0) -> list[tuple]:
    """The value table's rows as ``results._fillTable`` makes them: one per feature, by |value|."""
    rows = []
    for row in report["features"]:
        value, stderr = row["value"], row["stderr"]
        if isinstance(value, list):  # several targets: lists of values
            value = value[target]
            stderr = stderr[target] if isinstance(stderr, list) else stderr
        rows.append({**row, "value": value, "stderr": stderr})
    rows.sort(key=lambda row: -abs(row["value"]))
    table = []
    for row in rows:
        centroid = row.get("centroid_ras_mm", [math.nan] * 3)
        organ = row.get("organ", str(row["organ_label"]) if "organ_label" in row else "")
        stderr = math.nan if row["stderr"] is None else float(row["stderr"])
        table.append((int(row["id"]), float(row["value"]), stderr, int(row["voxels"]), organ, *map(float, centroid)))
    return table


# ---------------------------------------------------------------------------------------------- filling the panel


def child(panel: QWidget, name: str) -> QWidget:
    widget = panel.findChild(QWidget, name)
    if widget is None:
        raise LookupError(f"the .ui has no widget {name!r}")
    return widget


def bindParameters(panel: QWidget, parameters: dict, nodes: dict, shownPath: str) -> None:
    """What ``connectGui`` shows: each widget with a ``SlicerParameterName`` shows its parameter."""
    for widget in panel.findChildren(QWidget):
        name = widget.property("SlicerParameterName")
        if not name:
            continue
        if name not in parameters:
            raise LookupError(f"{widget.objectName()} shows the parameter {name!r}, not in SegShapExplainParameterNode")
        value = parameters[name]
        if isinstance(widget, qMRMLNodeComboBox):
            widget.setCurrentNodeName(nodes.get(name))
        elif isinstance(widget, ctkPathLineEdit):
            widget.setCurrentPath(shownPath)
        elif isinstance(widget, QComboBox):  # an enum: its labels, in its order
            members = list(type(value))
            widget.clear()
            widget.addItems([type(value).label(member) for member in members])
            widget.setCurrentIndex(members.index(value))
        elif isinstance(widget, QCheckBox):
            widget.setChecked(bool(value))
        elif isinstance(widget, QAbstractSpinBox):
            widget.setValue(value)
        else:
            raise TypeError(f"no binding for {type(widget).__name__} {widget.objectName()}")


def applyState(panel: QWidget, state) -> None:
    """``updateButtons``'s assignments, ``self.ui.WIDGET.PROPERTY = state.FIELD``, on the stand-ins."""
    for widgetName, prop, field in updateButtonsAssignments():
        widget, value = child(panel, widgetName), getattr(state, field)
        getattr(widget, "set" + prop[0].upper() + prop[1:])(value)


def fill(panel: QWidget, lib, report: dict | None, summary: str | None) -> None:
    settings, panelRules, resources = lib.settings, lib.panel, lib.resources
    demo = resources.demoCase()
    volumeName = resources.demoSampleData()["nodeNames"]
    parameters = parameterDefaults(lib)
    parameters["target"] = demo.target
    # The scene after loading the demo MRI (Sample Data) and placing a box where the demo's roi is.
    nodes = {"inputVolume": volumeName, "roi": f"{volumeName} SHAP box"}  # the name logic.placeBox gives
    shownPath = f"{SHOWN_ROOT}/{demo.model.relative_to(ROOT).as_posix()}"
    bindParameters(panel, parameters, nodes, shownPath)

    model = panelRules.modelStatus(demo.model, [])
    child(panel, "modelPathLineEdit").setCurrentPath(shownPath)  # _showParameters
    # updateButtons: the model's line, before the worker has said where the model runs.
    child(panel, "modelInfoLabel").setText(model.message)
    target = child(panel, "targetComboBox")
    target.setEditable(True)
    target.addItems(list(model.classes))
    target.setCurrentText(demo.target)

    explainSettings = settings.ExplainSettings(
        features=parameters["features"],
        nFeatures=parameters["nFeatures"],
        value=parameters["value"],
        foreground=parameters["foreground"],
    )
    if report is not None:
        check = report.get("settings", {})
        if (check.get("features"), check.get("n_features"), check.get("value")) != (
            explainSettings.features.value,
            explainSettings.nFeatures,
            explainSettings.value.value,
        ):
            print("warning: the demo run's settings differ from the panel's defaults", file=sys.stderr)
        child(panel, "resultTargetComboBox").addItem(
            f"{volumeName} SHAP {demo.target} ({explainSettings.shortName()})"  # logic.resultName
        )
        table = child(panel, "resultsTableView")
        table.setTable(tableColumns(), tableRows(report))
    if summary:
        child(panel, "statusLabel").setText(f"Done: {summary}")  # onExplained

    state = panelRules.panelState(
        panelRules.PanelInputs(
            hasVolume=True,
            model=model,
            target=demo.target,
            trustModel=parameters["trustModel"],
            running=False,
            features=parameters["features"],
            hasOrganSegmentation=False,
            device=parameters["device"],
            autoSamples=parameters["autoSamples"],
            hasResult=report is not None,
        )
    )
    applyState(panel, state)
    child(panel, "progressBar").setVisible(False)  # _finished


def render(panel: QWidget, output: Path, expandOptions: bool) -> None:
    for section in panel.findChildren(ctkCollapsibleButton):
        if expandOptions:
            section.setProperty("collapsed", False)
        section.arrange()
    width = max(WIDTH, panel.minimumSizeHint().width())  # long names widen a panel, in Slicer too
    panel.resize(width, 800)
    panel.show()
    QApplication.processEvents()
    table = panel.findChild(qMRMLTableView, "resultsTableView")
    if table is not None:
        table.showRows(VISIBLE_ROWS)
    QApplication.processEvents()
    layout = panel.layout()
    height = layout.totalHeightForWidth(width) if layout.hasHeightForWidth() else layout.totalSizeHint().height()
    panel.resize(width, max(height, layout.totalMinimumSize().height()))
    QApplication.processEvents()
    output.parent.mkdir(parents=True, exist_ok=True)
    if not panel.grab().save(str(output)):
        raise OSError(f"could not write {output}")
    print(f"Wrote {output} ({panel.width()} x {panel.height()} px)", file=sys.stderr)


def _quietOffscreen(kind, context, message: str) -> None:
    """Qt's messages on stderr, except the offscreen platform's note that windows have no size hints to pass on."""
    if "does not support propagateSizeHints" not in message:
        print(message, file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--demo-out", type=Path, help="a `segshap demo --out DIR` folder to use instead of a new run")
    parser.add_argument("--summary", help="with --demo-out: the summary line that run printed (else no status)")
    parser.add_argument("--collapsed", action="store_true", help="leave the Options section collapsed")
    parser.add_argument("--out", type=Path, default=OUTPUT, help=f"the picture (default {OUTPUT.relative_to(ROOT)})")
    args = parser.parse_args(argv)

    lib = importLib()
    if args.demo_out is not None:
        report = json.loads((args.demo_out / "explanation.json").read_text())
        summary = workerSummary(args.summary) if args.summary else None
    else:
        with tempfile.TemporaryDirectory(prefix="segshap-panel-") as scratch:
            summary = workerSummary(runDemo(Path(scratch) / "demo"))
            report = json.loads((Path(scratch) / "demo" / "explanation.json").read_text())

    qInstallMessageHandler(_quietOffscreen)
    app = QApplication.instance() or QApplication(["render_panel"])
    app.setStyle("Fusion")
    if "DejaVu Sans" in QFontDatabase.families():
        app.setFont(QFont("DejaVu Sans", 9))
    panel = loadPanel()
    fill(panel, lib, report, summary)
    render(panel, args.out, expandOptions=not args.collapsed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
