"""One self-contained HTML page with every table and figure of a run: ``results/report.html``.

Built from what the report stage has already written, so it shows exactly those numbers:
``results/verdict.json`` (when a verdict stage has written one) first, then EAT against PGD-AT and PGD-AT at
EAT's compute (means over training seeds, from ``results/tables/main.csv``), every ``results/tables/*.md`` table
(main, then the verdict and sanity tables when present), every ``results/figures/*.png`` figure, the run's
``params.yaml`` and its cost (``results/timings.json``). A table of contents links the sections.

Nothing is fetched when the page is opened: figures and CSV downloads are base64 ``data:`` URIs, the style sheet
is inline, fonts are the reader's own, and there is no script. The page is a pure function of its inputs (no
date, no absolute path), so re-running the stage on the same results rewrites the same bytes.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

from eatlib.atomic import write_atomic
from eatlib.report import DISPLAY_NAMES, SD_SUFFIX, ResultsError, defense_label, read_csv_table

READINGS = ("ahead", "behind", "indistinguishable")
VERDICT_KEYS = ("metric", "diff_mean", "ci95", "eval_ci95", "seeds", "reading")
# The comparison the paper is about: its method against the strongest single-model adversarial training, at that
# training's own budget and at EAT's (pgd_at_matched, shown when the results have it).
FOCUS_BASELINES = ("pgd_at", "pgd_at_matched")
FOCUS_DEFENSES = (*FOCUS_BASELINES, "eat")
FOCUS_COLUMNS = (("clean", "ami"), ("clean", "ari"), ("clean", "recall@1"), ("robust", "ami"), ("robust", "ari"),
                 ("robust", "recall@1"), ("worst", "ami"), ("worst", "ari"), ("cost", "train_minutes"))
TABLE_TITLES = {"main": "Main table: every defense", "verdict": "Verdict table", "sanity": "Sanity checks",
                "ablation": "Ablation of EAT's design choices"}


@dataclass
class Section:
    """One ``<section>``: ``anchor`` is its id (the table of contents links to it), ``children`` its sub-entries
    in the table of contents as (anchor, title) pairs."""

    anchor: str
    title: str
    body: str
    children: list[tuple[str, str]] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------------------- helpers

def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _anchor(*parts: str) -> str:
    return "-".join(re.sub(r"[^a-z0-9]+", "-", str(part).lower()).strip("-") for part in parts)


def _data_uri(content: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(content).decode('ascii')}"


def _download(path: Path) -> str:
    """A link that saves ``path`` (a small CSV) from the page itself."""
    return (f'<a class="download" download="{_e(path.name)}" href="{_data_uri(path.read_bytes(), "text/csv")}">'
            f"{_e(path.name)}</a>")


def png_size(content: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's header; a file that is not a PNG is a :class:`ResultsError`."""
    if content[:8] != b"\x89PNG\r\n\x1a\n" or content[12:16] != b"IHDR":
        raise ResultsError("not a PNG file (the report embeds figures/*.png as written by eatlib.plots)")
    return struct.unpack(">II", content[16:24])


# ------------------------------------------------------------------------------------------------- markdown tables

_INLINE_BOLD = re.compile(r"\*\*(.+?)\*\*")


def _inline(text: str) -> str:
    """A Markdown cell or line as HTML: escaped, with ``**bold**`` kept."""
    return _INLINE_BOLD.sub(r"<strong>\1</strong>", _e(text))


def _cells(line: str) -> list[str]:
    inner = line.strip()[1:-1]
    return [cell.strip().replace("\\|", "|") for cell in re.split(r"(?<!\\)\|", inner)]


def _pipe_table(lines: list[str]) -> str:
    header, rule, *rows = lines
    right = [cell.endswith(":") for cell in _cells(rule)]
    align = lambda i: ' class="num"' if i < len(right) and right[i] else ""
    out = ["<div class=\"scroll\"><table>", "<thead><tr>"]
    out += [f"<th{align(i)}>{_inline(cell)}</th>" for i, cell in enumerate(_cells(header))]
    out.append("</tr></thead><tbody>")
    for row in rows:
        cells = _cells(row)
        member = cells[0].startswith("&emsp;")   # an ensemble member alone, indented under its ensemble
        cells[0] = cells[0].removeprefix("&emsp;")
        out.append('<tr class="member">' if member else "<tr>")
        out += [f"<td{align(i)}>{_inline(cell)}</td>" for i, cell in enumerate(cells)]
        out.append("</tr>")
    out.append("</tbody></table></div>")
    return "\n".join(out)


def markdown_to_html(text: str) -> str:
    """The Markdown that :func:`eatlib.report.markdown_table` writes, as HTML: ``*caption*`` lines, ``**arch**``
    and ``#`` headings, pipe tables (``---:`` columns right-aligned, ``&emsp;`` rows indented), other lines as
    paragraphs."""
    blocks, table = [], []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            table.append(line)
            continue
        if table:
            blocks.append(_pipe_table(table))
            table = []
        stripped = line.strip()
        if not stripped:
            continue
        if heading := re.fullmatch(r"#{1,6}\s+(.+)", stripped):
            blocks.append(f"<h4>{_inline(heading[1])}</h4>")
        elif stripped.startswith("**") and stripped.endswith("**") and stripped.count("**") == 2:
            blocks.append(f"<h4>{_e(stripped[2:-2])}</h4>")
        elif stripped.startswith("*") and stripped.endswith("*") and not stripped.startswith("**"):
            blocks.append(f'<p class="caption">{_inline(stripped[1:-1])}</p>')
        else:
            blocks.append(f"<p>{_inline(stripped)}</p>")
    return "\n".join(blocks)


# ----------------------------------------------------------------------------------------------------------- verdict

def _check_entry(entry: dict, where: str) -> None:
    """One comparison of one metric: the keys of :data:`VERDICT_KEYS` (others are allowed and ignored)."""
    for key in VERDICT_KEYS:
        if key not in entry:
            raise ResultsError(f"{where}.{key}' is missing; the keys are {', '.join(VERDICT_KEYS)}")
    for key in ("ci95", "eval_ci95"):
        interval = entry[key]
        if not (isinstance(interval, list) and len(interval) == 2
                and all(isinstance(v, int | float) and not isinstance(v, bool) for v in interval)):
            raise ResultsError(f"{where}.{key}' must be [low, high], found {interval!r}")
    if not isinstance(entry["diff_mean"], int | float) or isinstance(entry["diff_mean"], bool):
        raise ResultsError(f"{where}.diff_mean' must be a number, found {entry['diff_mean']!r}")
    if not isinstance(entry["seeds"], int) or isinstance(entry["seeds"], bool) or entry["seeds"] < 1:
        raise ResultsError(f"{where}.seeds' must be a positive integer, found {entry['seeds']!r}")
    if entry["reading"] not in READINGS:
        raise ResultsError(f"{where}.reading' is {entry['reading']!r}; allowed: {', '.join(READINGS)}")


def verdict_rows(verdict: dict, path: str | Path = "verdict.json") -> list[tuple[str, str, dict]]:
    """``(arch, comparison, entry)`` per metric of each comparison, in the file's order, checked. A comparison is
    one entry (``{metric, diff_mean, ci95, eval_ci95, seeds, reading, ...}``) or per-metric entries
    (``{"ami": {...}, "ari": {...}}``, ``metric`` then defaults to the key); keys beyond these are ignored."""
    if not isinstance(verdict, dict) or not verdict:
        raise ResultsError(f"{path}: expected an object {{arch: {{comparison: {{...}}}}}}, found {verdict!r:.80}")
    rows = []
    for arch, comparisons in verdict.items():
        if not isinstance(comparisons, dict) or not comparisons:
            raise ResultsError(f"{path}: '{arch}' must be a non-empty object of comparisons")
        for name, entry in comparisons.items():
            where = f"{path}: '{arch}.{name}"
            if not isinstance(entry, dict):
                raise ResultsError(f"{where}' must be an object with keys {', '.join(VERDICT_KEYS)}")
            if "diff_mean" in entry or "reading" in entry:   # one metric
                _check_entry(entry, where)
                rows.append((arch, name, entry))
                continue
            per_metric = {key: value for key, value in entry.items() if isinstance(value, dict)}
            if not per_metric:
                raise ResultsError(f"{where}' must be an object with keys {', '.join(VERDICT_KEYS)}, or one such "
                                   'object per metric ({"ami": {...}, "ari": {...}})')
            for metric, sub in per_metric.items():
                sub = {"metric": metric, **sub}
                _check_entry(sub, f"{where}.{metric}")
                rows.append((arch, name, sub))
    return rows


def load_verdict(path: str | Path) -> dict:
    """``verdict.json``: ``{arch: {comparison: {metric, diff_mean, ci95, eval_ci95, seeds, reading}}}`` (or
    per-metric entries, see :func:`verdict_rows`), checked; a missing or malformed entry is a
    :class:`ResultsError` naming the file and the dotted key."""
    path = Path(path)
    try:
        verdict = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ResultsError(f"{path}: cannot read it as JSON ({error}); re-run the verdict stage") from error
    verdict_rows(verdict, path)
    return verdict


def _interval(values) -> str:
    return f"[{values[0]:+.3f}, {values[1]:+.3f}]"


def _verdict_section(verdict: dict) -> Section:
    rows = []
    for arch, name, entry in verdict_rows(verdict):
        metric = DISPLAY_NAMES.get(entry["metric"], entry["metric"])
        rows.append(
            f"<tr><td>{_e(arch)}</td><td>{_e(name)}</td><td>{_e(metric)}</td>"
            f'<td class="num">{float(entry["diff_mean"]):+.3f}</td><td class="num">{_interval(entry["ci95"])}</td>'
            f'<td class="num">{_interval(entry["eval_ci95"])}</td><td class="num">{_e(entry["seeds"])}</td>'
            f'<td><span class="reading {_e(entry["reading"])}">{_e(entry["reading"])}</span></td></tr>'
        )
    body = (
        '<p class="caption">Paired differences over training seeds (first named minus second). '
        "95% CI over seeds, and over the evaluation alone (other k-means seeds, test classes resampled); the "
        "reading is <em>ahead</em> or <em>behind</em> only when both intervals exclude zero on the same side "
        "(with one seed, the evaluation interval alone).</p>"
        '<div class="scroll"><table><thead><tr><th>arch</th><th>comparison</th><th>metric</th>'
        '<th class="num">mean difference</th><th class="num">95% CI (seeds)</th>'
        '<th class="num">95% CI (evaluation)</th><th class="num">seeds</th><th>reading</th></tr></thead><tbody>'
        + "\n".join(rows) + "</tbody></table></div>"
    )
    return Section("verdict", "Verdict", body)


# ------------------------------------------------------------------------------------------------ EAT against PGD-AT

def _focus_value(table, defense: str, arch: str, column: tuple, suffix: str = "") -> float:
    value = table.loc[defense].get((arch, column[0], column[1] + suffix), math.nan)
    return float(value) if value is not None else math.nan


def _focus_section(main_csv: Path) -> Section | None:
    """EAT, PGD-AT and (when present) PGD-AT at EAT's compute side by side per architecture, means over seeds
    with ± sd where the table has one, and EAT minus each baseline, from ``main.csv``."""
    table = read_csv_table(main_csv)
    if not {"pgd_at", "eat"} <= set(table.index):
        return None
    defenses = [d for d in FOCUS_DEFENSES if d in table.index]
    baselines = [d for d in FOCUS_BASELINES if d in table.index]
    archs = list(dict.fromkeys(table.columns.get_level_values(0)))
    head = "".join(f'<th class="num">{_e(_column_name(column))}</th>' for column in FOCUS_COLUMNS)
    rows = []
    for arch in archs:
        values = {d: [_focus_value(table, d, arch, c) for c in FOCUS_COLUMNS] for d in defenses}
        if all(math.isnan(v) for v in values["eat"]):
            continue
        # A baseline this architecture has no run of (pgd_at_matched on one arch only) gets no rows.
        shown = [d for d in defenses if d == "pgd_at" or not all(math.isnan(v) for v in values[d])]
        arch_baselines = [d for d in baselines if d in shown]
        for i, defense in enumerate(shown):
            arch_cell = f'<td rowspan="{len(shown) + len(arch_baselines)}">{_e(arch)}</td>' if i == 0 else ""
            sds = [_focus_value(table, defense, arch, c, SD_SUFFIX) for c in FOCUS_COLUMNS]
            cells = "".join(f'<td class="num">{_number(v, c)}{_plus_minus(sd, c)}</td>'
                            for v, sd, c in zip(values[defense], sds, FOCUS_COLUMNS, strict=True))
            seeds = _focus_value(table, defense, arch, ("run", "seeds"))
            cells += f'<td class="num">{"–" if math.isnan(seeds) else int(seeds)}</td>'
            rows.append(f"<tr>{arch_cell}<td>{_e(defense_label(defense))}</td>{cells}</tr>")
        for baseline in arch_baselines:
            diffs = [a - b for a, b in zip(values["eat"], values[baseline], strict=True)]
            cells = "".join(f'<td class="num {_sign(d)}">{_number(d, c, signed=True)}</td>'
                            for d, c in zip(diffs, FOCUS_COLUMNS, strict=True))
            rows.append(f'<tr class="diff"><td>eat − {_e(baseline)}</td>{cells}<td></td></tr>')
    body = (
        '<p class="caption">The paper\'s claim in one table: EAT (an ensemble of adversarially trained members) '
        "against PGD adversarial training of one network (and, where run, PGD-AT trained for EAT's compute), on "
        "the same data, attacks and test subset. Each value is the mean over the row's training seeds (column "
        "seeds), ± the standard deviation over seeds where the main table has one. "
        'Robust = headline attack, worst = minimum over the attack suite (see the <a href="#table-main">main '
        'table</a> for the attack and the subset, and <a href="#figure-robustness-eps">robustness against ε</a> '
        "for every ε, at the main seed). A difference of means is not yet a verdict: that is the paired test over "
        "seeds of the verdict stage.</p>"
        f'<div class="scroll"><table><thead><tr><th>arch</th><th>defense</th>{head}<th class="num">seeds</th>'
        "</tr></thead><tbody>" + "\n".join(rows) + "</tbody></table></div>"
        f"<p>Data: {_download(main_csv)}</p>"
    )
    return Section("eat-vs-pgd-at", "EAT against PGD-AT", body)


def _column_name(column: tuple) -> str:
    group, key = column
    name = DISPLAY_NAMES.get(key, key)
    return name if group == "cost" else f"{DISPLAY_NAMES.get(group, group)} {name}"


def _number(value: float, column: tuple, *, signed: bool = False) -> str:
    if value is None or math.isnan(value):
        return "–"
    decimals = 1 if column[-1] == "train_minutes" else 3
    return f"{value:+.{decimals}f}" if signed else f"{value:.{decimals}f}"


def _plus_minus(sd: float, column: tuple) -> str:
    return "" if math.isnan(sd) else f" ± {_number(sd, column)}"


def _sign(value: float) -> str:
    return "" if math.isnan(value) or value == 0 else ("up" if value > 0 else "down")


# ------------------------------------------------------------------------------------------------- tables, figures

def _table_order(paths: list[Path]) -> list[Path]:
    known = list(TABLE_TITLES)
    return sorted(paths, key=lambda p: (known.index(p.stem) if p.stem in known else len(known), p.stem))


def _tables_section(tables_dir: Path) -> Section | None:
    paths = _table_order(list(tables_dir.glob("*.md")))
    if not paths:
        return None
    parts, children = [], []
    for path in paths:
        anchor, title = _anchor("table", path.stem), TABLE_TITLES.get(path.stem, f"Table: {path.stem}")
        csv = path.with_suffix(".csv")
        extra = f"<p>Data: {_download(csv)}</p>" if csv.exists() else ""
        parts.append(f'<h3 id="{anchor}">{_e(title)}</h3>\n{markdown_to_html(path.read_text())}\n{extra}')
        children.append((anchor, title))
    return Section("tables", "Tables", "\n".join(parts), children)


def figure_caption(stem: str) -> tuple[str, str]:
    """(title, caption) of a figure written by the report stage, from its file name."""
    if stem.startswith("verdict"):
        return ("Verdict", "Paired differences over seeds with their 95% intervals (see the verdict table).")
    if stem == "robustness_eps":
        return ("Robustness against ε", "Score under the sweep attack at each ε, one line per defense, at the "
                "main training seed (params seed) only; ε = 0 is the clean score and the dotted line marks the "
                "headline ε of the tables.")
    if stem == "ablation":
        return ("Ablation", "Per variant: clean score (light bar), robust score under the headline attack (dark "
                "bar) and the worst case over the attack suite (tick).")
    if stem == "contact_sheet":
        return "Data", "Sample images of the prepared data set, as the models see them."
    if match := re.fullmatch(r"training_(.+)", stem):
        return (f"Training curves: {match[1]}", "Per epoch: training loss and validation scores of each run "
                "(the clean pretraining run first, then every trained defense), at the main training seed.")
    if match := re.fullmatch(r"tsne_([^_]+)_(.+)", stem):
        return (f"t-SNE: {match[1]} / {match[2]}", "Clean (left) and headline-attacked (right) test embeddings "
                "of the main training seed's model in one shared t-SNE map, coloured by class: an attack that works "
                "scatters the clusters.")
    return stem.replace("_", " "), ""


def _figure_order(paths: list[Path]) -> list[Path]:
    rank = [r"verdict.*", r"robustness_eps", r"training_.+", r"tsne_.+", r"ablation", r"contact_sheet"]
    position = lambda p: next((i for i, pattern in enumerate(rank) if re.fullmatch(pattern, p.stem)), len(rank))
    return sorted(paths, key=lambda p: (position(p), p.stem))


def _figures_section(figures_dir: Path) -> Section | None:
    paths = _figure_order(list(figures_dir.glob("*.png")))
    if not paths:
        return None
    parts, children = [], []
    for path in paths:
        content = path.read_bytes()
        try:
            width, height = png_size(content)
        except ResultsError as error:
            raise ResultsError(f"{path}: {error}") from error
        title, caption = figure_caption(path.stem)
        anchor = _anchor("figure", path.stem)
        parts.append(
            f'<figure id="{anchor}"><h3>{_e(title)}</h3>'
            f'<img src="{_data_uri(content, "image/png")}" alt="{_e(title)}" width="{width}" height="{height}">'
            f"<figcaption>{_e(caption)} <span class=\"file\">{_e(path.name)}</span></figcaption></figure>"
        )
        children.append((anchor, title))
    downloads = [_download(p) for p in sorted(figures_dir.glob("*.csv"))]
    if downloads:
        parts.append(f"<p>Figure data: {', '.join(downloads)}</p>")
    return Section("figures", "Figures", "\n".join(parts), children)


# --------------------------------------------------------------------------------------------------- params, cost

def _params_section(params_path: Path) -> Section:
    text = params_path.read_text() if params_path.exists() else f"({params_path.name} not found)"
    body = (f"<p>The <code>{_e(params_path.name)}</code> this run was made with: every knob of the pipeline. "
            f"Change one and <code>dvc repro</code> re-runs only the stages that read it.</p><pre>{_e(text)}</pre>")
    return Section("parameters", "Parameters", body)


def _cost_section(timings_path: Path) -> Section | None:
    if not timings_path.exists():
        return None
    try:
        timings = json.loads(timings_path.read_text())
    except json.JSONDecodeError as error:
        raise ResultsError(f"{timings_path}: cannot read it as JSON ({error}); re-run the report stage") from error
    stages = {k: float(v) for k, v in timings.items() if k != "total"}
    total = float(timings.get("total", sum(stages.values())))
    groups: dict[str, float] = {}
    for key, seconds in stages.items():
        groups[key.split("/")[0]] = groups.get(key.split("/")[0], 0.0) + seconds

    def rows(items) -> str:
        return "\n".join(
            f'<tr><td>{_e(name)}</td><td class="num">{seconds / 60:.1f}</td>'
            f'<td class="num">{100 * seconds / total if total else 0:.1f}%</td>'
            f'<td class="bar"><span style="width:{100 * seconds / total if total else 0:.1f}%"></span></td></tr>'
            for name, seconds in items)

    head = ('<thead><tr><th>stage</th><th class="num">minutes</th><th class="num">share</th><th></th></tr>'
            "</thead>")
    body = (
        f"<p>Wall time of the stages that produced these results: <strong>{total / 60:.1f} minutes</strong> in "
        "all (training and attack times as each stage measured them; the report stage's own time included).</p>"
        f'<div class="scroll"><table class="cost">{head}<tbody>{rows(groups.items())}'
        f'<tr class="diff"><td>total</td><td class="num">{total / 60:.1f}</td><td class="num">100%</td>'
        "<td></td></tr></tbody></table></div>"
        f"<details><summary>Every stage ({len(stages)})</summary><div class=\"scroll\"><table class=\"cost\">"
        f"{head}<tbody>{rows(stages.items())}</tbody></table></div></details>"
    )
    return Section("cost", "Cost", body)


# -------------------------------------------------------------------------------------------------------- the page

_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI","DejaVu Sans",sans-serif;margin:0;color:#1d232a;
background:#fafafa;line-height:1.45}
main{max-width:1400px;margin:0 auto;padding:1.5rem 2rem 4rem}
h1{font-size:1.6rem;margin:.2rem 0 .4rem}h2{border-bottom:2px solid #d6dbe1;padding-bottom:.2rem;margin-top:2.4rem}
h3{margin:1.6rem 0 .4rem}h4{margin:1rem 0 .3rem;font-size:1rem}
a{color:#0b5cad}nav.toc{background:#fff;border:1px solid #d6dbe1;border-radius:6px;padding:.6rem 1.2rem}
nav.toc ol{margin:.2rem 0;padding-left:1.4rem}nav.toc ol ol{font-size:.92em}
.caption,figcaption{color:#4a545e;font-size:.92rem}.file{font-family:monospace;color:#7a848e}
.scroll{overflow-x:auto}table{border-collapse:collapse;font-size:.86rem;background:#fff;margin:.4rem 0}
th,td{padding:.25rem .55rem;border-bottom:1px solid #e3e7eb;white-space:nowrap;text-align:left}
th{background:#eef1f4;position:sticky;top:0}.num{text-align:right;font-variant-numeric:tabular-nums}
tr.member td:first-child{padding-left:1.8rem;color:#5a646e}tr.member{color:#5a646e}
tr.diff td{font-weight:600;border-top:2px solid #c3cad2}td.up{color:#13703a}td.down{color:#b3261e}
.reading{padding:.05rem .5rem;border-radius:1rem;font-weight:600}.reading.ahead{background:#d3f0dc;color:#13703a}
.reading.behind{background:#f8d7d4;color:#b3261e}.reading.indistinguishable{background:#e6e9ed;color:#4a545e}
figure{margin:1rem 0 2rem}figure img{max-width:100%;height:auto;border:1px solid #e3e7eb;background:#fff}
pre{background:#fff;border:1px solid #d6dbe1;padding:.8rem;overflow-x:auto;font-size:.8rem}
td.bar{width:240px}td.bar span{display:block;height:.7rem;background:#6c8ebf;border-radius:2px}
.top{font-size:.8rem;font-weight:normal;margin-left:.6rem}a.download{font-family:monospace}
"""


def _toc(sections: list[Section]) -> str:
    items = []
    for section in sections:
        sub = "".join(f'<li><a href="#{a}">{_e(t)}</a></li>' for a, t in section.children)
        items.append(f'<li><a href="#{section.anchor}">{_e(section.title)}</a>{f"<ol>{sub}</ol>" if sub else ""}'
                     "</li>")
    return f'<nav class="toc" id="contents"><strong>Contents</strong><ol>{"".join(items)}</ol></nav>'


def build_report(results_dir: str | Path = "results", params_path: str | Path = "params.yaml", *,
                 title: str = "Ensemble Adversarial Training under clustering inference: results") -> str:
    """The report page as a string (see the module docstring for what it holds, in which order)."""
    results_dir, params_path = Path(results_dir), Path(params_path)
    tables_dir = results_dir / "tables"
    if not (tables_dir / "main.md").exists():
        raise ResultsError(f"{tables_dir / 'main.md'} does not exist; the report stage writes the tables first "
                           "(eatlib.report.write_tables), then this page")
    sections = []
    if (results_dir / "verdict.json").exists():
        sections.append(_verdict_section(load_verdict(results_dir / "verdict.json")))
    if (tables_dir / "main.csv").exists() and (focus := _focus_section(tables_dir / "main.csv")):
        sections.append(focus)
    sections += [s for s in (_tables_section(tables_dir), _figures_section(results_dir / "figures")) if s]
    sections.append(_params_section(params_path))
    if cost := _cost_section(results_dir / "timings.json"):
        sections.append(cost)
    body = "\n".join(
        f'<section id="{s.anchor}"><h2>{_e(s.title)}<a class="top" href="#contents">↑ contents</a></h2>\n'
        f"{s.body}\n</section>" for s in sections
    )
    intro = ("<p>Every table and figure of one run of the pipeline, written by its report stage. It needs no "
             "network: figures and data files are embedded.</p>")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        # No request may leave the page: this policy blocks anything but embedded data.
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; "
        "style-src 'unsafe-inline'\">"
        f"<title>{_e(title)}</title><style>{_STYLE}</style></head>\n<body><main>\n<h1>{_e(title)}</h1>{intro}\n"
        f"{_toc(sections)}\n{body}\n</main></body></html>\n"
    )


def write_report(results_dir: str | Path = "results", params_path: str | Path = "params.yaml",
                 out_path: str | Path | None = None) -> Path:
    """Write :func:`build_report` to ``out_path`` (default ``results_dir/report.html``) atomically."""
    out_path = Path(out_path) if out_path is not None else Path(results_dir) / "report.html"
    return write_atomic(out_path, build_report(results_dir, params_path))

