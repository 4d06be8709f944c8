"""Slicer-side logic of SegShapExplain: MRML nodes to files, the background worker, files back to MRML nodes.

Nothing here imports Qt, so every decision is testable with the PyPI package ``slicer-core``; the module file
``SegShapExplain.py`` only wires these functions to the panel.
"""
