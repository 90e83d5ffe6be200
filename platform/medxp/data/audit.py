"""The dataset audit: class balance, image sizes and modes, unreadable files, duplicates and leakage.

A test image that also sits in train (the same file, or the same picture re-encoded,
resized or brightened) makes a test score meaningless; medical data sets ship such
copies more often than one would hope. `audit_files` / `audit_arrays` scan every image
once (medxp.data.audit_scan) and pair duplicates (medxp.data.audit_duplicates); the
report prints, renders as JSON and HTML, and logs to MLflow. `leak_policy` turns the
setting `audit.on_leak` into what training does about leaks: warn, fail, or drop the
held-out copies; `apply_leak_policy` does the same to labelled file lists or arrays.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from medxp.data.audit_duplicates import DuplicatePair, find_duplicate_pairs
from medxp.data.audit_scan import ImageRecord, array_to_image, scan_arrays, scan_files
from medxp.errors import MedxpError

log = logging.getLogger(__name__)

# Leaking pairs shown with thumbnails in the HTML report.
THUMBNAIL_PAIRS = 6
THUMBNAIL_SIZE = 96
# Pairs listed per list in report.json; the counts beside them cover all pairs.
MAX_LISTED_PAIRS = 1000
LEAK_POLICIES = ("off", "warn", "fail", "drop")


@dataclass
class AuditReport:
    """What the audit found; `pairs` lists every duplicate pair, leaking ones first."""

    dataset: str
    class_names: tuple[str, ...]
    records: list[ImageRecord]
    pairs: list[DuplicatePair]
    max_distance: int
    seconds: float = 0.0
    dropped: dict[str, list[int]] = field(default_factory=dict)
    thumbnails: dict[str, str] = field(default_factory=dict)  # source -> inline PNG of the first leaking pairs

    @property
    def leaking_pairs(self) -> list[DuplicatePair]:
        """Duplicates whose copies sit in different splits: data leakage."""
        return [pair for pair in self.pairs if pair.leaking]

    @property
    def exact_duplicates(self) -> list[DuplicatePair]:
        return [pair for pair in self.pairs if pair.exact]

    @property
    def near_duplicates(self) -> list[DuplicatePair]:
        return [pair for pair in self.pairs if not pair.exact]

    @property
    def unreadable(self) -> list[ImageRecord]:
        """Images that could not be read or decoded in full."""
        return [record for record in self.records if not record.readable]

    def class_counts(self) -> dict[str, dict[str, int]]:
        """Images per class in each split."""
        counts: dict[str, dict[str, int]] = {}
        for record in self.records:
            per_split = counts.setdefault(record.split, {name: 0 for name in self.class_names})
            per_split[self.class_names[record.label]] += 1
        return counts

    def imbalance(self) -> dict[str, float]:
        """Majority / minority class count per split (inf when a class is absent)."""
        ratios = {}
        for split, counts in self.class_counts().items():
            values = list(counts.values())
            ratios[split] = max(values) / min(values) if min(values) else float("inf")
        return ratios

    def sizes(self) -> Counter:
        """(width, height) of readable images, counted."""
        return Counter((r.width, r.height) for r in self.records if r.width)

    def modes(self) -> Counter:
        """Pillow modes (L, RGB, RGBA, I;16, ...), counted."""
        return Counter(r.mode for r in self.records if r.mode)

    def summary_text(self) -> str:
        """A readable plain-text report, leakage first."""
        lines = [f"Audit of {self.dataset}: {len(self.records)} images, {self.seconds:.1f} s"]
        lines += _leak_lines(self)
        lines.append("Class counts (imbalance = majority / minority):")
        imbalance = self.imbalance()
        for split, counts in self.class_counts().items():
            shown = ", ".join(f"{name} {count}" for name, count in counts.items())
            lines.append(f"  {split:<6} {shown}  (imbalance {imbalance[split]:.2f})")
        lines.append("Image sizes: " + ", ".join(f"{w}x{h} ({n})" for (w, h), n in self.sizes().most_common(5))
                     + _size_range(self.sizes()))
        lines.append("Modes: " + ", ".join(f"{mode} ({n})" for mode, n in self.modes().most_common()))
        lines.append(f"Duplicate pairs within a split: {len(self.pairs) - len(self.leaking_pairs)}; all duplicate "
                     f"pairs: {len(self.exact_duplicates)} exact, {len(self.near_duplicates)} near")
        lines.append(f"Unreadable or truncated: {len(self.unreadable)}")
        lines += [f"  {r.problem}: {r.source} ({r.error})" for r in self.unreadable[:20]]
        return "\n".join(lines)

    def to_json(self) -> dict:
        """The report as plain data."""
        return {
            "dataset": self.dataset, "images": len(self.records), "seconds": self.seconds,
            "near_duplicate_distance_bits": self.max_distance,
            "counts": {"leaking_pairs": len(self.leaking_pairs), "exact_duplicates": len(self.exact_duplicates),
                       "near_duplicates": len(self.near_duplicates), "unreadable": len(self.unreadable),
                       "leaking_by_splits": dict(Counter(pair.splits for pair in self.leaking_pairs))},
            "leaking_pairs": [pair.to_json() for pair in self.leaking_pairs[:MAX_LISTED_PAIRS]],
            "duplicate_pairs_within_splits": [pair.to_json() for pair in self.pairs
                                              if not pair.leaking][:MAX_LISTED_PAIRS],
            "class_counts": self.class_counts(),
            # Strict JSON has no Infinity: a split with an empty class has no ratio.
            "imbalance": {split: ratio if np.isfinite(ratio) else None for split, ratio in self.imbalance().items()},
            "sizes": {f"{w}x{h}": n for (w, h), n in self.sizes().most_common()},
            "modes": dict(self.modes()),
            "unreadable": [{"split": r.split, "source": r.source, "problem": r.problem, "error": r.error}
                           for r in self.unreadable],
            "dropped": self.dropped,
        }

    def to_html(self) -> str:
        """A self-contained page: leakage (in red, with thumbnails) first, then the rest."""
        return _render_html(self)


def audit_files(files: Mapping[str, Sequence[tuple[Path, int]]], class_names: Sequence[str], *,
                max_distance: int = 16, dataset: str = "") -> AuditReport:
    """Audits labelled image files: `{"train": [(path, label), ...], "valid": ..., "test": ...}`."""
    started = time.perf_counter()
    _check_labels({split: [label for _, label in labelled] for split, labelled in files.items()}, class_names)
    records = scan_files(files)
    return _report(records, class_names, max_distance, dataset, started, _load_file)


def audit_arrays(arrays: Mapping[str, tuple[np.ndarray, np.ndarray]], class_names: Sequence[str], *,
                 max_distance: int = 16, dataset: str = "") -> AuditReport:
    """Audits decoded arrays (MedMNIST): `{"train": (images uint8 N,C,H,W, labels), ...}`."""
    started = time.perf_counter()
    _check_labels({split: np.asarray(labels).ravel().tolist() for split, (_, labels) in arrays.items()},
                  class_names)
    records = scan_arrays(arrays)

    def load(record: ImageRecord) -> Image.Image:
        return array_to_image(np.asarray(arrays[record.split][0])[record.index])

    return _report(records, class_names, max_distance, dataset, started, load)


def _report(records: list[ImageRecord], class_names: Sequence[str], max_distance: int, dataset: str,
            started: float, load: Callable[[ImageRecord], Image.Image]) -> AuditReport:
    pairs = find_duplicate_pairs(records, max_distance)
    report = AuditReport(dataset, tuple(class_names), records, pairs, max_distance)
    report.thumbnails = _thumbnails(report.leaking_pairs[:THUMBNAIL_PAIRS], load)
    report.seconds = time.perf_counter() - started
    return report


def _check_labels(labels: Mapping[str, Sequence[int]], class_names: Sequence[str]) -> None:
    """Raises naming the split when a label is no index into `class_names`."""
    for split, values in labels.items():
        bad = [value for value in values if not 0 <= int(value) < len(class_names)]
        if bad:
            raise MedxpError(f"split '{split}': label {bad[0]} is not a class index; expected 0 to "
                             f"{len(class_names) - 1} for the classes {list(class_names)}")


def leak_policy(report: AuditReport, on_leak: str, fail_on_unreadable: bool = False) -> dict[str, list[int]]:
    """Applies `audit.on_leak` to the report.

    Args:
        report: The audit of the data about to be trained on.
        on_leak: `warn` (log loudly), `fail` (raise), or `drop` (leave the held-out copies out).
        fail_on_unreadable: Raise when any image is unreadable or truncated.

    Returns:
        `{split: [row indices to leave out]}`; empty unless `drop` found leaks.

    Raises:
        MedxpError: leaks with `fail`, or unreadable images with `fail_on_unreadable`.
    """
    if on_leak not in LEAK_POLICIES:
        raise MedxpError(f"audit.on_leak = {on_leak!r}: expected one of {', '.join(LEAK_POLICIES)}")
    if fail_on_unreadable and report.unreadable:
        first = report.unreadable[0]
        raise MedxpError(f"{first.source}: {first.problem} ({first.error}); {len(report.unreadable)} unreadable "
                         f"image(s) in {report.dataset} and audit.fail_on_unreadable is set")
    leaks = report.leaking_pairs
    if not leaks or on_leak == "off":
        return {}
    first = leaks[0]
    described = (f"{len(leaks)} image(s) appear in two splits (data leakage), e.g. {first.first.source} "
                 f"({first.first.split}) and {first.second.source} ({first.second.split})")
    if on_leak == "fail":
        raise MedxpError(f"{report.dataset}: {described}; audit.on_leak=fail (use drop to leave the held-out "
                         f"copies out, or fix the data)")
    if on_leak == "warn":
        log.warning("DATA LEAKAGE in %s: %s; test scores are optimistic (audit.on_leak=warn)", report.dataset,
                    described)
        return {}
    dropped: dict[str, set[int]] = {}
    for pair in leaks:
        dropped.setdefault(pair.second.split, set()).add(pair.second.index)
    report.dropped = {split: sorted(rows) for split, rows in dropped.items()}
    log.warning("DATA LEAKAGE in %s: %s; dropped the later copies (%s)", report.dataset, described,
                ", ".join(f"{split}: {len(rows)}" for split, rows in report.dropped.items()))
    return report.dropped


def apply_leak_policy(report: AuditReport, files: Mapping[str, Any], on_leak: str) -> dict[str, Any]:
    """`leak_policy` applied to what was audited: the files (or arrays) without the dropped copies.

    Args:
        report: The audit of exactly these `files`.
        files: `{split: [(path, label), ...]}`, or `{split: (images, labels)}` arrays.
        on_leak: `off`, `warn`, `fail` or `drop` (see `leak_policy`).

    Returns:
        A new dict; with `drop`, each split without its leaking held-out copies.

    Raises:
        MedxpError: leakage with `fail`, or files that are not the ones audited.
    """
    audited = Counter(record.split for record in report.records)
    given = {split: len(value[1]) if isinstance(value, tuple) else len(value) for split, value in files.items()}
    if given != dict(audited):
        raise MedxpError(f"audit of {report.dataset or 'the data'} covered {dict(audited)} images per split, but "
                         f"the files given have {given}; audit these files again")
    dropped = leak_policy(report, on_leak)
    return {split: without_rows(value, dropped.get(split, [])) for split, value in files.items()}


def without_rows(value: Any, rows: Sequence[int]) -> Any:
    """A split's list, or (images, labels) arrays, without the given row indices (unchanged when none)."""
    if not len(rows):
        return value  # keeps a memory-mapped cache array mapped instead of copying it
    if isinstance(value, tuple):
        keep = np.ones(len(value[1]), dtype=bool)
        keep[list(rows)] = False
        return tuple(np.asarray(part)[keep] for part in value)
    left_out = set(rows)
    return [item for index, item in enumerate(value) if index not in left_out]


def log_audit(report: AuditReport, tracker) -> None:
    """Logs `audit/report.json`, `audit/report.html`, `audit/class_counts.png` and the audit metrics."""
    tracker.log_metrics({"audit_leaking_pairs": len(report.leaking_pairs),
                         "audit_exact_duplicates": len(report.exact_duplicates),
                         "audit_near_duplicates": len(report.near_duplicates),
                         "audit_unreadable": len(report.unreadable)})
    tracker.log_dict(report.to_json(), "audit/report.json")
    tracker.log_text(report.to_html(), "audit/report.html")
    tracker.log_figure(class_counts_figure(report), "audit/class_counts.png")


def class_counts_figure(report: AuditReport) -> Figure:
    """Grouped bars: images per class in each split."""
    counts = report.class_counts()
    figure = Figure(figsize=(max(5, 1.2 * len(report.class_names) + 2), 3.6), constrained_layout=True)
    axes = figure.add_subplot()
    width = 0.8 / max(len(counts), 1)
    positions = np.arange(len(report.class_names))
    for offset, (split, per_class) in enumerate(counts.items()):
        bars = axes.bar(positions + offset * width, list(per_class.values()), width, label=split)
        axes.bar_label(bars, fontsize=7)
    axes.set_xticks(positions + width * (len(counts) - 1) / 2, report.class_names, rotation=20, ha="right")
    axes.set_ylabel("images")
    axes.set_title(f"{report.dataset}: images per class and split")
    axes.legend()
    return figure


def _leak_lines(report: AuditReport) -> list[str]:
    leaks = report.leaking_pairs
    if not leaks:
        return ["Leakage: none (no image of one split found in another)"]
    lines = [f"LEAKAGE: {len(leaks)} pair(s) across splits "
             f"({sum(p.exact for p in leaks)} exact, {sum(not p.exact for p in leaks)} near):"]
    lines += [f"  {p.splits:<11} {'exact' if p.exact else f'{p.distance} bits'}  {p.first.source}  <->  "
              f"{p.second.source}" for p in leaks[:20]]
    return lines + ([f"  ... and {len(leaks) - 20} more"] if len(leaks) > 20 else [])


def _size_range(sizes: Counter) -> str:
    if not sizes:
        return ""
    areas = sorted(sizes, key=lambda size: size[0] * size[1])
    return f"; smallest {areas[0][0]}x{areas[0][1]}, largest {areas[-1][0]}x{areas[-1][1]}"


def _thumbnails(pairs: Sequence[DuplicatePair], load: Callable[[ImageRecord], Image.Image]) -> dict[str, str]:
    """`source -> <img>` with an inline PNG of both copies of each pair; images that fail to load are skipped."""
    thumbnails = {}
    for record in (record for pair in pairs for record in (pair.first, pair.second)):
        try:
            image = load(record).convert("RGB")
        except (OSError, ValueError):
            continue
        image.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        thumbnails[record.source] = (f'<img alt="" src="data:image/png;base64,'
                                     f'{base64.b64encode(buffer.getvalue()).decode()}">')
    return thumbnails


def _load_file(record: ImageRecord) -> Image.Image:
    with Image.open(record.source) as image:
        image.load()
        return image


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    head = "".join(f"<th>{html.escape(str(cell))}</th>" for cell in header)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _render_html(report: AuditReport) -> str:
    esc = html.escape
    leaks = report.leaking_pairs
    if leaks:
        rows = [(esc(p.splits), "exact" if p.exact else f"{p.distance} bits",
                 f"{report.thumbnails.get(p.first.source, '')}<br>{esc(p.first.source)}",
                 f"{report.thumbnails.get(p.second.source, '')}<br>{esc(p.second.source)}")
                for p in leaks[:200]]
        leak_section = (f'<h2 class="bad">Data leakage: {len(leaks)} pair(s) across splits</h2>'
                        + _table(("splits", "match", "kept copy", "held-out copy"), rows))
    else:
        leak_section = '<h2 class="good">Data leakage: none found</h2>'
    imbalance = report.imbalance()
    counts = [(esc(split), *per_class.values(), f"{imbalance[split]:.2f}")
              for split, per_class in report.class_counts().items()]
    sizes = [(f"{w}x{h}", n) for (w, h), n in report.sizes().most_common(10)]
    unreadable = [(esc(r.split), esc(r.problem), esc(r.source), esc(r.error)) for r in report.unreadable[:200]]
    within = [(esc(p.splits), "exact" if p.exact else f"{p.distance} bits", esc(p.first.source),
               esc(p.second.source)) for p in report.pairs if not p.leaking][:200]
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Audit of {esc(report.dataset)}</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse;margin-bottom:1.5em}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}}
.bad{{color:#b00020}} .good{{color:#1b5e20}}</style></head><body>
<h1>Audit of {esc(report.dataset)}</h1><p>{len(report.records)} images, {report.seconds:.1f} s;
near duplicates: perceptual hashes within {report.max_distance} bits.</p>
{leak_section}
<h2>Class counts</h2>{_table(("split", *report.class_names, "imbalance"), counts)}
<h2>Image sizes and modes</h2>{_table(("size", "images"), sizes)}
{_table(("mode", "images"), list(report.modes().most_common()))}
<h2>Unreadable or truncated: {len(report.unreadable)}</h2>{_table(("split", "problem", "file", "error"), unreadable)}
<h2>Duplicates within a split: {len(within)}</h2>{_table(("split", "match", "first", "second"), within)}
</body></html>"""
