"""The compare report: ``manifest.json`` (what was compared) and ``index.html`` rendered from it.

The manifest is the single record of a report: the photos, one column per method (the source
photos first) with its images, metrics and training cost. ``index.html`` and ``study.html`` are
rendered from it, so ``gan-style compare --tally`` can rewrite the ranking section by rendering
the page again. Every name that came from the user (file names, labels, paths) is escaped.
"""

from __future__ import annotations

import html
import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from gan_style.errors import UserError

MANIFEST_FILE = "manifest.json"
INDEX_FILE = "index.html"
STUDY_FILE = "study.html"
MANIFEST_VERSION = 1
SOURCE = "source"

#: metric key -> (column heading, what it measures, whether higher is better)
METRICS: dict[str, tuple[str, str, bool]] = {
    "fid": ("FID", "Fréchet Inception Distance to the real set", False),
    "kid": ("KID", "Kernel Inception Distance to the real set", False),
    "swd": ("SWD", "sliced Wasserstein distance of patches to the real set", False),
    "ssim": ("SSIM", "structural similarity to the source photo (how much of its structure is kept)", True),
    "content_loss": ("content", "VGG content loss to the source photo", False),
    "style_loss": ("style", "VGG Gram style loss to the style image", False),
    "lpips_diversity": ("LPIPS div.", "LPIPS distance between outputs of different styles", True),
}


def load_manifest(report_dir: str | Path) -> dict[str, Any]:
    path = Path(report_dir) / MANIFEST_FILE
    if not path.is_file():
        raise UserError(f"{report_dir} is not a compare report (no {MANIFEST_FILE}); make one with gan-style compare --output {report_dir}")
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if manifest.get("version") != MANIFEST_VERSION:
        raise UserError(f"{path} is of report version {manifest.get('version')}, this gan_style reads version {MANIFEST_VERSION}; make the report again")
    return manifest


def save_manifest(report_dir: Path, manifest: Mapping[str, Any]) -> Path:
    path = report_dir / MANIFEST_FILE
    path.write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def method_columns(manifest: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The columns that are methods (the votes' candidates): all but the source photos."""
    return [column for column in manifest["columns"] if column["kind"] != SOURCE]


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _src(relative: str) -> str:
    return _e(quote(relative))


def _number(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.{digits}g}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
td.number { text-align: right; font-variant-numeric: tabular-nums; }
th[title] { text-decoration: underline dotted; cursor: help; }
table.grid td, table.grid th { padding: 2px; text-align: center; font-weight: normal; font-size: 0.85em; }
table.grid img { width: 160px; height: auto; display: block; image-rendering: auto; }
.muted { color: #666; font-size: 0.9em; }
.bar { position: relative; width: 200px; height: 0.8em; background: #eee; }
.bar span { position: absolute; top: 0; bottom: 0; background: #8ab; }
.bar i { position: absolute; top: -2px; bottom: -2px; width: 2px; background: #234; }
"""


def _methods_table(manifest: Mapping[str, Any]) -> str:
    columns = manifest["columns"]
    present = [key for key in METRICS if any(key in column.get("metrics", {}) for column in columns)]
    head = ["<th>column</th>", "<th>what</th>"]
    head += [f'<th title="{_e(METRICS[k][1])}">{_e(METRICS[k][0])} {"↑" if METRICS[k][2] else "↓"}</th>' for k in present]
    head += [
        '<th title="optimiser steps of the training run">steps</th>',
        '<th title="seconds per training iteration, from the run\'s logs">s/iteration</th>',
        '<th title="steps x s/iteration">training time</th>',
        '<th title="seconds per image while this report was made">inference s/image</th>',
    ]
    rows = []
    for column in columns:
        metrics, cost = column.get("metrics", {}), column.get("cost", {})
        cells = [f"<td>{_e(column['label'])}</td>", f"<td>{_e(column.get('description', ''))}</td>"]
        cells += [f'<td class="number">{_number(metrics.get(k))}</td>' for k in present]
        per_iteration = cost.get("sec_per_iteration")
        steps = cost.get("steps")
        cells += [
            f'<td class="number">{_number(steps)}</td>',
            f'<td class="number">{_number(per_iteration, 3)}</td>',
            f'<td class="number">{_duration(per_iteration * steps if per_iteration is not None and steps else None)}</td>',
            f'<td class="number">{_number(cost.get("inference_sec_per_image"), 3)}</td>',
        ]
        rows.append("<tr>" + "".join(cells) + "</tr>")
    notes = [f"<li>{_e(column['label'])}: {_e(column['cost']['note'])}</li>" for column in columns if column.get("cost", {}).get("note")]
    table = f'<table id="methods"><tr>{"".join(head)}</tr>\n' + "\n".join(rows) + "</table>"
    metric_note = (
        f'<p class="muted">Metrics against the real set {_e(manifest.get("real", ""))}; the source column measures the '
        "untranslated photos, the baseline a method should improve on (FID, KID, SWD) or keep (SSIM).</p>"
    )
    return table + metric_note + (f'<ul class="muted">{"".join(notes)}</ul>' if notes else "")


def _ranking_section(manifest: Mapping[str, Any], ranking: Mapping[str, Any] | None) -> str:
    study = f'<a href="{STUDY_FILE}">the preference study</a>'
    if not ranking or not ranking.get("votes"):
        return (f'<section id="ranking"><h2>Ranking</h2><p id="ranking-status">No votes tallied yet. Vote in {study}, then run '
                f"<code>gan-style compare --tally {_e(manifest.get('output', 'REPORT'))}</code>.</p></section>")
    labels = {column["key"]: column["label"] for column in manifest["columns"]}
    top = max(r["high"] for r in ranking["methods"]) or 1.0
    rows = []
    for position, r in enumerate(ranking["methods"], 1):
        bar = (f'<div class="bar"><span style="left:{100 * r["low"] / top:.1f}%;width:{100 * (r["high"] - r["low"]) / top:.1f}%"></span>'
               f'<i style="left:{100 * r["score"] / top:.1f}%"></i></div>')
        rows.append(
            f'<tr data-method="{_e(r["method"])}"><td class="number">{position}</td><td>{_e(labels.get(r["method"], r["method"]))}</td>'
            f'<td class="number">{r["score"]:.3f}</td><td class="number">{r["low"]:.3f} – {r["high"]:.3f}</td><td>{bar}</td>'
            f'<td class="number">{r["wins"]:g}</td><td class="number">{r["comparisons"]}</td></tr>'
        )
    return (
        f'<section id="ranking"><h2>Ranking</h2><p id="ranking-status">{ranking["votes"]} vote(s) from {study}. '
        "Bradley-Terry scores (they sum to 1; P(A preferred to B) = score A / (score A + score B)) with "
        f'{ranking["bootstrap"]}-sample bootstrap 95% intervals; a tie counts half to each side.</p>'
        '<table id="ranking-table"><tr><th>rank</th><th>method</th><th>score</th><th>95% interval</th><th></th>'
        "<th>wins</th><th>votes</th></tr>\n" + "\n".join(rows) + "</table></section>"
    )


def _grid(manifest: Mapping[str, Any]) -> str:
    columns = manifest["columns"]
    head = "<tr><th>photo</th>" + "".join(f"<th>{_e(column['label'])}</th>" for column in columns) + "</tr>"
    rows = []
    for photo in manifest["photos"]:
        cells = []
        for column in columns:
            relative = column["images"].get(photo["id"])
            alt = _e(f"{photo['name']}: {column['label']}")
            cells.append(f'<td><img src="{_src(relative)}" alt="{alt}"></td>' if relative else "<td>skipped</td>")
        rows.append(f'<tr><th>{_e(photo["name"])}</th>{"".join(cells)}</tr>')
    return '<table class="grid" id="grid">' + head + "\n" + "\n".join(rows) + "</table>"


def render_index(manifest: Mapping[str, Any], ranking: Mapping[str, Any] | None = None) -> str:
    methods = len(method_columns(manifest))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>gan-style compare: {methods} methods</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_STYLE}</style></head>
<body>
<h1>Compare report</h1>
<p>{len(manifest["photos"])} photo(s) from {_e(manifest.get("input", ""))}, {methods} method(s), direction {_e(manifest.get("direction", ""))},
longest side {_e(manifest.get("size", ""))} px; made {_e(manifest.get("created", ""))} on {_e(manifest.get("device", ""))}.
Judge them blind in <a href="{STUDY_FILE}">the two-up preference study</a>.</p>
<h2>Methods</h2>
{_methods_table(manifest)}
{_ranking_section(manifest, ranking)}
<h2>Images</h2>
<p class="muted">Rows: photos; columns: the source photo, then each method.</p>
{_grid(manifest)}
</body></html>
"""


def write_index(report_dir: Path, manifest: Mapping[str, Any], ranking: Mapping[str, Any] | None = None) -> Path:
    path = report_dir / INDEX_FILE
    path.write_text(render_index(manifest, ranking), encoding="utf-8")
    return path


def unique_keys(labels: Sequence[str]) -> list[str]:
    """File-system and URL safe keys for the column labels, unique, never ``source``."""
    keys: list[str] = []
    for label in labels:
        base = re.sub(r"[^a-z0-9_]+", "-", label.lower()).strip("-") or "method"
        key, number = base, 2
        while key in keys or key == SOURCE:
            key, number = f"{base}-{number}", number + 1
        keys.append(key)
    return keys
