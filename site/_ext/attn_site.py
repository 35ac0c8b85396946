"""Sphinx extension for the course website: maths typeset in the browser by the KaTeX that the
grader's feedback pages use (grader/static/katex, staged into _static/katex by site/build.py),
so pages render their maths from the site itself, offline; never MathJax from a CDN.

Sphinx writes inline maths as ``<span class="math">\\(...\\)</span>`` and display maths as
``<div class="math">\\[...\\]</div>`` (the markup of ``sphinx.ext.mathjax``, reused here: its
visitors are what this renderer registers); ``_static/attn-math.js`` hands each of those
elements to KaTeX's auto-render and marks the page ``data-attn-math="done"`` when it is finished
(the browser test waits for that mark).
"""

from __future__ import annotations

from sphinx.ext.mathjax import html_visit_displaymath, html_visit_math

RENDERER = "attn_katex"


def setup(app):
    app.add_html_math_renderer(RENDERER, (html_visit_math, None), (html_visit_displaymath, None))
    app.add_css_file("katex/katex.min.css")
    app.add_css_file("attn-site.css")
    # deferred scripts run in document order, after parsing: KaTeX, auto-render, then the call
    for js in ("katex/katex.min.js", "katex/auto-render.min.js", "attn-math.js"):
        app.add_js_file(js, loading_method="defer")
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
