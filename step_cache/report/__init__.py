"""``step-cache report``: one Markdown + static HTML page comparing training runs, with PNG figures.

``build_report(runs, out)`` reads run directories (and optionally sweep directories), draws the figures
(``figures.py``), assembles a small document of headings, tables and images (``document.py``) and renders it
to ``report.md`` and ``report.html``.
"""

from step_cache.report.build import build_report, comparison_rows, format_comparison

__all__ = ["build_report", "comparison_rows", "format_comparison"]
