"""The predict flow (`medxp predict`): a registered or logged model on image files and folders, into a CSV.

The files go through the model's own pyfunc exactly as `mlflow models serve` would receive them
(base64 of the file's bytes in column `image`), so a CSV row and a served answer for the same file
are the same numbers: the model decodes, converts grey/RGB, resizes and normalises with the code
evaluation uses (`medxp.serving`). A file that cannot be read or decoded is a row with its reason
in `error`; the others go on. Long lists show a progress bar (a log line per batch outside a
terminal).
"""

from __future__ import annotations

import base64
import csv
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from medxp.errors import MedxpError

log = logging.getLogger(__name__)

# What a folder's walk picks up: the encoded image files the model's decoder reads (DICOM too).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".dcm", ".dicom")
BATCH = 32


@dataclass
class PredictSummary:
    """Where the CSV went, how many files were scored, and the ones that failed with why."""

    output: Path
    predicted: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    explanations: list[Path] = field(default_factory=list)


def collect_files(paths: Sequence[str | Path]) -> list[Path]:
    """Files as given, and every image file under a folder (recursive, sorted).

    Raises:
        MedxpError: a path that does not exist, or no image file at all.
    """
    files: list[Path] = []
    for given in map(Path, paths):
        if given.is_dir():
            files.extend(sorted(p for p in given.rglob("*") if p.is_file() and _looks_like_image(p)))
        elif given.is_file():
            files.append(given)
        else:
            raise MedxpError(f"{given}: no such file or folder; expected image files (PNG, JPEG, DICOM, ...) "
                             "or folders holding them")
    if not files:
        raise MedxpError(f"no image files in {', '.join(map(str, paths))}: expected files ending in "
                         f"{', '.join(IMAGE_SUFFIXES)} (or DICOM files without a suffix)")
    return files


def _looks_like_image(path: Path) -> bool:
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return True
    if path.suffix:
        return False
    try:  # DICOM files often have no suffix: a 128-byte preamble, then "DICM"
        with path.open("rb") as handle:
            return handle.read(132)[128:] == b"DICM"
    except OSError:
        return False


def predict_files(model_uri: str, paths: Sequence[str | Path], output: str | Path, *, explain: bool = False,
                  progress: bool = True, explain_samples: int = 1000) -> PredictSummary:
    """Scores every file with the model at `model_uri` and writes one CSV row per file.

    Columns: `path`, `prob_<class>` per class, `label` (at the model's stored operating point),
    `threshold` (empty for the arg-max), `model_name`, `model_version`, `error`.
    With `explain`, a LIME PNG per readable image beside the CSV (`<csv stem>_lime/`).

    Raises:
        MedxpError: no such path or no image file, or the model cannot be loaded.
    """
    import mlflow.pyfunc
    from mlflow.exceptions import MlflowException

    files = collect_files(paths)
    try:
        model = mlflow.pyfunc.load_model(model_uri)
    except (MlflowException, OSError) as error:
        raise MedxpError(f"cannot load the model at {model_uri}: {error}") from error
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    summary = PredictSummary(output)
    rows: list[dict[str, Any]] = []
    for batch in _batches(files, progress):
        rows.extend(_score(model, batch))
    columns = _columns(rows)
    with output.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    for row in rows:
        if row.get("error"):
            summary.failed.append((row["path"], row["error"]))
        else:
            summary.predicted += 1
    for path, reason in summary.failed:
        log.warning("%s: not predicted: %s", path, reason)
    if explain:
        readable = [(Path(row["path"]), str(row.get("label", ""))) for row in rows if not row.get("error")]
        summary.explanations = explain_files(model_uri, readable, output.parent / f"{output.stem}_lime",
                                             num_samples=explain_samples)
    return summary


def _batches(files: list[Path], progress: bool) -> Iterable[list[Path]]:
    from medxp.console import progress_bars_wanted, tqdm

    batches = [files[start:start + BATCH] for start in range(0, len(files), BATCH)]
    bar = tqdm(total=len(files), desc="predict", unit="img", disable=not (progress and progress_bars_wanted()))
    with bar:
        for number, batch in enumerate(batches, 1):
            yield batch
            bar.update(len(batch))
            if bar.disable and len(batches) > 1:
                log.info("predict: %d/%d files", min(number * BATCH, len(files)), len(files))


def _score(model: Any, files: list[Path]) -> list[dict[str, Any]]:
    """One row per file: the model's answer, or the reason the file could not be read."""
    import pandas as pd

    encoded, unreadable = [], {}
    for index, path in enumerate(files):
        try:
            encoded.append(base64.b64encode(path.read_bytes()).decode("ascii"))
        except OSError as error:
            unreadable[index] = f"cannot read the file ({error.strerror or error})"
            encoded.append("")
    readable = [encoded[i] for i in range(len(files)) if i not in unreadable]
    answers = iter(model.predict(pd.DataFrame({"image": readable})).to_dict("records") if readable else [])
    rows = []
    for index, path in enumerate(files):  # the model answers the readable files in order
        if index in unreadable:
            rows.append({"path": str(path), "error": unreadable[index]})
        else:
            rows.append({"path": str(path), **{key: _cell(value) for key, value in next(answers).items()}})
    return rows


def _cell(value: Any) -> Any:
    if isinstance(value, float) and value != value:  # NaN: an empty cell (no threshold, or no probabilities)
        return ""
    return value


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    """path, the class probabilities, then the model's other outputs, `error` last."""
    seen: dict[str, None] = {"path": None}
    for row in rows:
        for key in row:
            if key.startswith("prob_"):
                seen.setdefault(key)
    for row in rows:
        for key in row:
            if key != "error":
                seen.setdefault(key)
    seen.setdefault("error")
    return list(seen)


def explain_files(model_uri: str, files: list[tuple[Path, str]], folder: Path, *,
                  num_samples: int = 1000) -> list[Path]:
    """A LIME PNG per (image, predicted label) (`<folder>/<file stem>.png`): the evidence for the predicted class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import numpy as np

    from medxp.explain.lime_images import explain_image
    from medxp.models.loading import load_inference_model
    from medxp.serving import ModelFacts, decode_file

    model = load_inference_model(model_uri)
    shape = ModelFacts.of(model).input_shape
    if len(shape) != 3:
        raise MedxpError(f"{model_uri}: --explain needs an image model that records its input shape (C, H, W); "
                         f"this one records {shape or 'none'}")
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for path, label in files:
        # (C, H, W) uint8, decoded, converted and resized as the model's own serving code does
        image = np.round(decode_file(path.read_bytes(), shape[-1], shape[0], what=str(path)) * 255).astype(np.uint8)
        explanation = explain_image(model, image, num_samples=num_samples)
        figure, axes = plt.subplots(1, 2, figsize=(6, 3))
        axes[0].imshow(explanation.image)
        axes[0].set_title(path.name, fontsize=8)
        axes[1].imshow(explanation.overlay)
        axes[1].set_title(f"LIME: evidence for {label or explanation.label} (p = {explanation.probability:.2f})",
                          fontsize=8)
        for axis in axes:
            axis.axis("off")
        target = folder / f"{path.stem}.png"
        figure.savefig(target, dpi=100, bbox_inches="tight")
        plt.close(figure)
        written.append(target)
    return written
