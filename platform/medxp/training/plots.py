"""Figures of a run's results: confusion matrix, learning curves, ROC curves, reliability diagrams.

The confusion matrix and ROC curves are scikit-learn's displays (`ConfusionMatrixDisplay`,
`RocCurveDisplay`) drawn on medxp's axes; medxp adds the cell text (count and row percentage),
the operating-point marker and its titles and labels.
Each function returns a :class:`matplotlib.figure.Figure` and saves nothing;
callers write it (``figure.savefig(path)``) or log it (``mlflow.log_figure``).
Figures are built with the object-oriented API, not ``pyplot``: they need no
display, never switch the process's backend, and are freed like any object
instead of piling up in pyplot's list of open figures during a long search.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from sklearn.calibration import calibration_curve
from sklearn.metrics import ConfusionMatrixDisplay, RocCurveDisplay

from medxp.errors import MedxpError

# Keys that are not curves: epoch counters, and the learning rate, whose scale would flatten the metrics.
_NOT_CURVES = frozenset({"epoch", "best_epoch", "step", "lr", "learning_rate"})


def confusion_matrix_figure(
    matrix: Sequence[Sequence[int]],
    class_names: Sequence[str],
    *,
    title: str = "Confusion matrix",
    normalize: bool = False,
) -> Figure:
    """Draws a confusion matrix with counts and row percentages in every cell.

    Args:
        matrix: Square counts, rows = true class, columns = predicted class
            (the ``"matrix"`` of :func:`medxp.training.metrics.confusion`).
        class_names: Names of the classes, in the matrix's order.
        title: Title above the matrix.
        normalize: Colour the cells by row fraction (the recall of each true class)
            and show the percentage first; otherwise colour by count.

    Returns:
        The figure: the matrix axes and a colour bar.

    Raises:
        MedxpError: If the matrix is not square or does not match ``class_names``.
    """
    counts = _checked_matrix(matrix, class_names)
    row_fractions = _row_fractions(counts)
    n_classes = len(class_names)
    side = max(4.5, 0.75 * n_classes + 2.5)
    title_width = 0.075 * max(len(line) for line in title.splitlines() or [""]) + 2.0  # ~0.075 in a character
    figure = Figure(figsize=(max(side + 1.0, title_width), side), layout="constrained")
    axes = figure.add_subplot()
    colour_values = row_fractions if normalize else counts
    colour_max = 1 if normalize else max(counts.max(), 1)
    display = ConfusionMatrixDisplay(colour_values, display_labels=[str(name) for name in class_names])
    display.plot(ax=axes, cmap="Blues", colorbar=True, im_kw={"vmin": 0, "vmax": colour_max},
                 text_kw={"fontsize": _cell_font_size(n_classes)})
    display.im_.colorbar.set_label("fraction of true class" if normalize else "cases")
    _write_cells(display, counts, row_fractions, normalize)
    _label_confusion_axes(axes, class_names)
    axes.set_title(title)
    return figure


def curves_figure(history: Sequence[Mapping[str, float]], *, best_epoch: int | None = None) -> Figure:
    """Draws learning curves: losses on the left, every other metric on the right.

    Args:
        history: One mapping per epoch, e.g. ``{"epoch": 1, "train_loss": 0.7,
            "val_loss": 0.6, "train_accuracy": 0.5, "val_accuracy": 0.6,
            "val_f1_macro": 0.55}``. Keys ending in ``loss`` go to the left panel.
            A key may be missing from some epochs (e.g. validation every few
            epochs); its curve skips them. Without ``"epoch"`` the x axis counts 1, 2, ...
            The learning rate (``lr``, ``learning_rate``) is left out: its scale
            would flatten the metric curves.
        best_epoch: Epoch to mark with a dashed vertical line on both panels.

    Returns:
        The figure, with two axes (losses, metrics). An empty history gives empty
        panels that say so rather than an error, so a failed run can still log it.
    """
    figure = Figure(figsize=(11, 4.2), layout="constrained")
    loss_axes, metric_axes = figure.subplots(1, 2)
    epochs = [float(record.get("epoch", position + 1)) for position, record in enumerate(history)]
    series_names = _series_names(history)
    loss_names = [name for name in series_names if name.endswith("loss")]
    metric_names = [name for name in series_names if not name.endswith("loss")]
    loss_axes.set(title="Loss", xlabel="epoch", ylabel="loss")
    metric_axes.set(title="Metrics", xlabel="epoch", ylabel="value")
    for axes, names in ((loss_axes, loss_names), (metric_axes, metric_names)):
        plotted = _plot_series(axes, history, epochs, names)
        if best_epoch is not None:
            axes.axvline(best_epoch, color="grey", linestyle="--", linewidth=1, label=f"best epoch ({best_epoch})")
        _finish_panel(axes, plotted)
    return figure


def roc_figure(y_true: np.ndarray, y_prob: np.ndarray, class_names: Sequence[str], *, positive_index: int = 1,
               threshold: float | None = None, title: str = "ROC") -> Figure:
    """Draws ROC curves with their AUC in the legend.

    Binary tasks get one curve, for the positive class against the other, and, given a
    threshold, a marker at the (1 - specificity, sensitivity) it reaches on these cases.
    Multi-class tasks get one one-vs-rest curve per class; a class with no case
    in ``y_true`` (or present in every case) has no curve and is named in the legend.

    Args:
        y_true: Integer labels, shape ``(N,)``.
        y_prob: Class probabilities, shape ``(N, C)``.
        class_names: The ``C`` class names.
        positive_index: Label of a binary task's positive class.
        threshold: A binary decision threshold on the positive class's probability to mark.
        title: Title above the curves (name the split and positive class there).

    Returns:
        The figure, with one axes.

    Raises:
        MedxpError: If ``y_prob`` is not ``(N, C)`` for ``N`` labels and ``C`` class names.
    """
    y_true, y_prob = _checked_probabilities(y_true, y_prob, class_names)
    figure = Figure(figsize=(5.5, 5.2), layout="constrained")
    axes = figure.add_subplot()
    if len(class_names) == 2:
        is_positive, scores = y_true == positive_index, y_prob[:, positive_index]
        _plot_roc_curve(axes, is_positive, scores,
                        f"{class_names[positive_index]} vs {class_names[1 - positive_index]}")
        if threshold is not None:
            _mark_threshold(axes, is_positive, scores, threshold)
    else:
        for label, name in enumerate(class_names):
            _plot_roc_curve(axes, y_true == label, y_prob[:, label], f"{name} vs rest")
    axes.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="chance")
    axes.set(title=title, xlabel="false positive rate (1 - specificity)",
             ylabel="true positive rate (sensitivity)", xlim=(0, 1), ylim=(0, 1.01), aspect="equal")
    axes.legend(loc="lower right", fontsize="small")
    return figure


def reliability_figure(y_true: np.ndarray, y_prob: np.ndarray, class_names: Sequence[str], *,
                       positive_index: int | None = None, uncalibrated_prob: np.ndarray | None = None,
                       n_bins: int = 15, title: str = "Reliability") -> Figure:
    """Draws a reliability diagram (``sklearn.calibration.calibration_curve``, equal-width bins).

    Binary tasks (``positive_index`` given): the observed fraction of positives against the
    predicted probability of the positive class. Multi-class: the accuracy against the
    top-class confidence (the quantity ECE bins). A histogram of the predicted values sits
    below. With ``uncalibrated_prob`` the curve before calibration is drawn too, dashed.

    Args:
        y_true: Integer labels, shape ``(N,)``.
        y_prob: Class probabilities, shape ``(N, C)`` (after calibration, if any).
        class_names: The ``C`` class names.
        positive_index: Label of a binary task's positive class; None for the top-class view.
        uncalibrated_prob: The probabilities before calibration, same shape.
        n_bins: Number of equal-width bins.
        title: Title above the diagram (name the split there).

    Returns:
        The figure, with two axes (the curve, the histogram).
    """
    y_true, y_prob = _checked_probabilities(y_true, y_prob, class_names)
    figure = Figure(figsize=(5.5, 6.2), layout="constrained")
    curve_axes, count_axes = figure.subplots(2, 1, height_ratios=(3, 1), sharex=True)
    curves = [("before calibration", uncalibrated_prob, "--")] if uncalibrated_prob is not None else []
    curves.append(("calibrated" if uncalibrated_prob is not None else "model", y_prob, "-"))
    for label, probabilities, style in curves:
        outcome, scores = _reliability_inputs(y_true, np.asarray(probabilities, dtype=float), positive_index)
        observed, predicted = calibration_curve(outcome, scores, n_bins=n_bins, strategy="uniform", pos_label=True)
        curve_axes.plot(predicted, observed, marker="o", markersize=3, linestyle=style, label=label)
        count_axes.hist(scores, bins=n_bins, range=(0, 1), histtype="step", linestyle=style)
    curve_axes.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="perfectly calibrated")
    binary = positive_index is not None
    curve_axes.set(title=title, ylabel=f"observed fraction {class_names[positive_index]}" if binary else "accuracy",
                   xlim=(0, 1), ylim=(0, 1.01))
    curve_axes.legend(loc="upper left", fontsize="small")
    count_axes.set(xlabel=f"predicted p({class_names[positive_index]})" if binary else "top-class confidence",
                   ylabel="cases")
    return figure


def _checked_probabilities(y_true: np.ndarray, y_prob: np.ndarray,
                           class_names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true).astype(int)
    y_prob = np.asarray(y_prob, dtype=float)
    if y_prob.shape != (len(y_true), len(class_names)):
        raise MedxpError(
            f"y_prob: expected shape {(len(y_true), len(class_names))} for {len(y_true)} labels "
            f"and {len(class_names)} class names, got {y_prob.shape}"
        )
    return y_true, y_prob


# ---------------------------------------------------------------- confusion matrix helpers


def _checked_matrix(matrix: Sequence[Sequence[int]], class_names: Sequence[str]) -> np.ndarray:
    counts = np.asarray(matrix)
    n_classes = len(class_names)
    if counts.shape != (n_classes, n_classes):
        raise MedxpError(
            f"confusion matrix: expected shape ({n_classes}, {n_classes}) for class names "
            f"{list(class_names)}, got {counts.shape}"
        )
    return counts


def _row_fractions(counts: np.ndarray) -> np.ndarray:
    """Each cell as a fraction of its row (true class); 0 for an empty row."""
    row_totals = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, row_totals, out=np.zeros(counts.shape), where=row_totals > 0)


def _cell_font_size(n_classes: int) -> float:
    return 11 if n_classes <= 4 else 9 if n_classes <= 7 else 7.5


def _write_cells(display: ConfusionMatrixDisplay, counts: np.ndarray, row_fractions: np.ndarray,
                 normalize: bool) -> None:
    """Puts the count and row percentage in each cell the display wrote, light on dark cells.

    The display picks a text's colour against the midpoint of the values shown; the cells are
    coloured on a scale from 0, so the shade on that scale decides (a matrix of large counts only
    would otherwise get dark text on dark cells).
    """
    shade = display.im_.norm(display.confusion_matrix)
    light, dark = display.im_.cmap(0.0), display.im_.cmap(1.0)
    for (true_label, predicted_label), text in np.ndenumerate(display.text_):
        count = counts[true_label, predicted_label]
        percent = f"{100 * row_fractions[true_label, predicted_label]:.1f}%"
        text.set_text(f"{percent}\n({count})" if normalize else f"{count}\n({percent})")
        text.set_color(light if shade[true_label, predicted_label] > 0.55 else dark)


def _label_confusion_axes(axes: Axes, class_names: Sequence[str]) -> None:
    positions = np.arange(len(class_names))
    longest_name = max(len(str(name)) for name in class_names)
    rotate = len(class_names) > 4 or longest_name > 8
    axes.set_xticks(positions, [str(name) for name in class_names],
                    rotation=40 if rotate else 0, ha="right" if rotate else "center")
    axes.set_yticks(positions, [str(name) for name in class_names])
    axes.set_xlabel("Predicted")
    axes.set_ylabel("True")


# ---------------------------------------------------------------- learning curve helpers


def _series_names(history: Sequence[Mapping[str, float]]) -> list[str]:
    """Numeric keys that are curves, in first-seen order."""
    names: dict[str, None] = {}
    for record in history:
        for key, value in record.items():
            if key not in _NOT_CURVES and isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
                names[key] = None
    return list(names)


def _plot_series(axes: Axes, history: Sequence[Mapping[str, float]], epochs: list[float], names: list[str]) -> int:
    """Plots each named series against the epochs; returns how many had a value to plot."""
    plotted = 0
    marker = "o" if len(epochs) <= 30 else None
    # One colour per measured quantity, solid for train and dashed for validation,
    # so train_accuracy and val_accuracy read as a pair.
    quantities = list(dict.fromkeys(_quantity(name) for name in names))
    for name in names:
        values = [float(record.get(name, np.nan)) for record in history]
        defined = [(epoch, value) for epoch, value in zip(epochs, values) if not np.isnan(value)]
        if not defined:
            continue
        axes.plot(*zip(*defined), marker=marker, markersize=3, label=name,
                  color=f"C{quantities.index(_quantity(name)) % 10}",
                  linestyle="--" if name.startswith("val") else "-")
        plotted += 1
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    return plotted


def _quantity(series_name: str) -> str:
    """What a series measures, without its split: ``val_f1_macro`` -> ``f1_macro``."""
    return series_name.removeprefix("train_").removeprefix("val_")


def _finish_panel(axes: Axes, plotted: int) -> None:
    axes.grid(alpha=0.3)
    if axes.lines:
        axes.legend(fontsize="small")
    if not plotted:
        axes.text(0.5, 0.5, "no values recorded", ha="center", va="center", transform=axes.transAxes)


# ---------------------------------------------------------------- ROC helpers


def _plot_roc_curve(axes: Axes, is_positive: np.ndarray, scores: np.ndarray, label: str) -> None:
    """One ROC curve (`RocCurveDisplay`); a legend entry without a curve when both outcomes are not present."""
    if is_positive.all() or not is_positive.any():
        axes.plot([], [], linestyle="none", label=f"{label} (no curve: one outcome only)")
        return
    display = RocCurveDisplay.from_predictions(is_positive, scores, pos_label=True, name=label, ax=axes,
                                               curve_kwargs={"linewidth": 1.5})
    display.line_.set_label(f"{label} (AUC = {display.roc_auc:.3f})")  # three decimals, not the display's two


def _mark_threshold(axes: Axes, is_positive: np.ndarray, scores: np.ndarray, threshold: float) -> None:
    """A point at the (1 - specificity, sensitivity) the threshold reaches on these cases."""
    predicted = scores >= threshold
    sensitivity = predicted[is_positive].mean() if is_positive.any() else np.nan
    false_positive_rate = predicted[~is_positive].mean() if (~is_positive).any() else np.nan
    axes.plot([false_positive_rate], [sensitivity], marker="o", color="C3", linestyle="none",
              label=f"threshold {threshold:.3f}: sens {sensitivity:.2f}, spec {1 - false_positive_rate:.2f}")


# ---------------------------------------------------------------- reliability helpers


def _reliability_inputs(y_true: np.ndarray, y_prob: np.ndarray,
                        positive_index: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(outcome, score) per case: positive and p(positive), or correct and top-class confidence."""
    if positive_index is not None:
        return y_true == positive_index, y_prob[:, positive_index]
    return y_prob.argmax(axis=1) == y_true, y_prob.max(axis=1)
