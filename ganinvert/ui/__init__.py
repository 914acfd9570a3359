"""The browser app of ``ganinvert ui`` (optional extra: ``pip install -e ".[ui]"``, Gradio).

:mod:`.handlers` holds what the page does as plain functions over the library's public API
(no Gradio, so they are unit-tested without a browser); :mod:`.app` lays out the page and wires
its events to them.
"""
