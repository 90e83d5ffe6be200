"""Tests of LIME explanations: they find a known region, segmenters, classifier_fn, grids, disc share, logging."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
import torch
from lime.lime_image import LimeImageExplainer
from matplotlib.figure import Figure
from torch import nn

from medxp.data import create_datamodule
from medxp.data.synthetic import disc_weight_share
from medxp.errors import MedxpError
from medxp.explanation_checks import EXPLANATION_CHECKS, CheckResult
from medxp.explain import (
    SEGMENTATIONS,
    BatchedLimeImageExplainer,
    create_segmenter,
    explain_image,
    explain_model,
    explanation_grid,
    kmeans_segments,
    make_classifier_fn,
    select_examples,
)
from medxp.models import create_model
from medxp.pipeline import inference_model
from medxp.tracking import NullTracker

SIZE = 64
REGION = 16  # the model looks only at the top-left REGION x REGION square


class RegionModel(nn.Module):
    """Two classes; p(class 1) = sigmoid(k * (mean brightness of the top-left square - 0.5))."""

    def __init__(self, steepness: float = 10.0) -> None:
        super().__init__()
        self.steepness = steepness
        self.calls: list[tuple[int, ...]] = []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.calls.append(tuple(images.shape))
        brightness = images[:, :, :REGION, :REGION].mean(dim=(1, 2, 3))
        bright = torch.sigmoid(self.steepness * (brightness - 0.5))
        return torch.stack([1 - bright, bright], dim=1)


def textured_image(bright_region: bool, seed: int = 0, channels: int = 3) -> np.ndarray:
    """A (C, SIZE, SIZE) uint8 image: dim noisy background, optionally a bright noisy top-left square."""
    rng = np.random.default_rng(seed)
    pixels = rng.uniform(0.15, 0.4, (channels, SIZE, SIZE))
    if bright_region:
        pixels[:, :REGION, :REGION] = rng.uniform(0.8, 0.95, (channels, REGION, REGION))
    return np.rint(pixels * 255).astype(np.uint8)


def share_in_region(heatmap: np.ndarray) -> float:
    positive = np.clip(heatmap, 0, None)
    return float(positive[:REGION, :REGION].sum() / positive.sum())


# ----------------------------------------------------------------------------- explain_image


@pytest.mark.parametrize("method", ["quickshift", "slic", "kmeans"])
def test_positive_weight_concentrates_on_the_region_the_model_reads(method):
    explanation = explain_image(RegionModel(), textured_image(True), method=method, num_samples=300, seed=1,
                                hide_color=0.0)

    area_share = REGION * REGION / SIZE**2
    assert explanation.label == 1 and explanation.probability > 0.9
    assert share_in_region(explanation.heatmap) > 0.7 > 10 * area_share
    assert explanation.segments.shape == (SIZE, SIZE)
    assert explanation.segment_weights.shape == (explanation.segments.max() + 1,)
    np.testing.assert_allclose(explanation.heatmap, explanation.segment_weights[explanation.segments])
    assert explanation.overlay.ndim == 3 and explanation.overlay.shape[2] == 3
    assert 0.0 <= explanation.overlay.min() and explanation.overlay.max() <= 1.0


def test_explaining_a_given_label_flips_the_sign_of_the_region():
    explanation = explain_image(RegionModel(), textured_image(True), method="slic", num_samples=200, label=0,
                                hide_color=0.0)

    assert explanation.label == 0
    assert explanation.heatmap[:REGION, :REGION].mean() < 0


def test_explanations_repeat_with_the_same_seed():
    first, second = (explain_image(RegionModel(), textured_image(True), method="quickshift", num_samples=100,
                                   seed=3) for _ in range(2))

    np.testing.assert_array_equal(first.segments, second.segments)
    np.testing.assert_allclose(first.segment_weights, second.segment_weights)


def test_grey_image_is_explained_with_a_one_channel_model():
    model = RegionModel()
    explanation = explain_image(model, torch.from_numpy(textured_image(True, channels=1)), method="slic",
                                num_samples=100, hide_color=0.0)

    assert explanation.image.shape == (SIZE, SIZE, 3)
    assert {shape[1] for shape in model.calls} == {1}
    assert share_in_region(explanation.heatmap) > 0.8


@pytest.mark.parametrize("image, message", [
    (np.zeros((SIZE, SIZE), np.uint8), r"expected \(C, H, W\)"),
    (np.zeros((2, SIZE, SIZE), np.uint8), r"expected \(C, H, W\)"),
    (np.zeros((3, SIZE, SIZE), np.float32), "expected uint8"),
])
def test_bad_images_are_refused(image, message):
    with pytest.raises(MedxpError, match=message):
        explain_image(RegionModel(), image, num_samples=10)


def test_bad_label_and_method_are_refused():
    with pytest.raises(MedxpError, match="expected a class index in 0..1"):
        explain_image(RegionModel(), textured_image(True), label=2, num_samples=10)
    with pytest.raises(MedxpError, match="valid: kmeans, quickshift, slic"):
        explain_image(RegionModel(), textured_image(True), method="watershed", num_samples=10)


# ----------------------------------------------------------------------------- classifier_fn


def test_classifier_fn_feeds_rgb_in_channel_order_and_in_batches():
    seen = []

    def model(images: torch.Tensor) -> torch.Tensor:
        seen.append(images)
        return images.mean(dim=(2, 3))  # per-channel means stand in for 3 "probabilities"

    images = np.zeros((10, 8, 8, 3))
    images[..., 0], images[..., 1], images[..., 2] = 0.1, 0.5, 0.9
    probabilities = make_classifier_fn(model, channels=3, batch_size=4)(images)

    assert [tuple(batch.shape) for batch in seen] == [(4, 3, 8, 8), (4, 3, 8, 8), (2, 3, 8, 8)]
    assert all(batch.dtype == torch.float32 for batch in seen)
    np.testing.assert_allclose(probabilities, np.tile([0.1, 0.5, 0.9], (10, 1)), rtol=1e-6)


def test_classifier_fn_turns_lime_rgb_back_into_one_grey_channel():
    seen = []

    def model(images: torch.Tensor) -> torch.Tensor:
        seen.append(images)
        return torch.cat([images.mean(dim=(1, 2, 3))[:, None], 1 - images.mean(dim=(1, 2, 3))[:, None]], dim=1)

    grey = np.random.default_rng(0).uniform(size=(3, 8, 8))
    rgb = np.repeat(grey[..., None], 3, axis=3)  # what lime's gray2rgb hands over
    make_classifier_fn(model, channels=1)(rgb)

    assert tuple(seen[0].shape) == (3, 1, 8, 8)
    np.testing.assert_allclose(seen[0][:, 0].numpy(), grey, rtol=1e-6)


def test_classifier_fn_puts_a_training_module_in_eval_mode_and_back():
    network = nn.Sequential(nn.Flatten(), nn.Dropout(0.9), nn.Linear(3 * 4 * 4, 2), nn.Softmax(dim=1)).train()
    classify = make_classifier_fn(network, channels=3)
    images = np.random.default_rng(0).uniform(size=(5, 4, 4, 3))

    np.testing.assert_allclose(classify(images), classify(images))
    assert network.training


def test_batched_explainer_makes_the_same_perturbations_as_lime():
    image = np.random.default_rng(0).uniform(size=(12, 12, 3))
    fudged = np.zeros_like(image)
    segments = np.arange(144).reshape(12, 12) // 20
    batches = {"lime": [], "medxp": []}

    def recorder(name):
        def classify(images):
            batches[name].append(images.copy())
            return images.mean(axis=(1, 2))
        return classify

    data_lime, labels_lime = LimeImageExplainer(random_state=5).data_labels(
        image, fudged, segments, recorder("lime"), num_samples=25, batch_size=10)
    data_ours, labels_ours = BatchedLimeImageExplainer(random_state=5).data_labels(
        image, fudged, segments, recorder("medxp"), num_samples=25, batch_size=10)

    np.testing.assert_array_equal(data_ours, data_lime)
    np.testing.assert_allclose(labels_ours, labels_lime)
    np.testing.assert_array_equal(np.concatenate(batches["medxp"]), np.concatenate(batches["lime"]))


# ----------------------------------------------------------------------------- segmentation


def test_kmeans_segments_have_the_image_shape_and_the_requested_clusters():
    image = np.transpose(textured_image(True), (1, 2, 0)) / 255.0

    labels = kmeans_segments(image, 7, seed=0)

    assert labels.shape == (SIZE, SIZE)
    assert np.array_equal(np.unique(labels), np.arange(7))


def test_kmeans_segmentation_follows_intensity():
    image = np.full((SIZE, SIZE, 3), 0.2)
    image[:REGION, :REGION] = 0.9

    labels = kmeans_segments(image, 12, intensity_weight=3.0)

    bright_clusters = set(np.unique(labels[:REGION, :REGION]))
    assert bright_clusters.isdisjoint(np.unique(labels[REGION:, :]))


@pytest.mark.parametrize("method", ["quickshift", "slic", "kmeans"])
@pytest.mark.parametrize("size", [32, 64])
def test_segmenters_number_regions_from_zero_without_gaps(method, size):
    image = np.transpose(textured_image(True, seed=size), (1, 2, 0))[:: SIZE // size, :: SIZE // size] / 255.0

    labels = create_segmenter(method, size)(image)

    assert labels.shape == (size, size)
    assert np.array_equal(np.unique(labels), np.arange(labels.max() + 1))
    assert labels.max() + 1 >= 8


def test_segmenter_parameters_are_passed_and_checked():
    image = np.random.default_rng(0).uniform(size=(SIZE, SIZE, 3))

    assert create_segmenter("kmeans", SIZE, n_clusters=5)(image).max() == 4
    with pytest.raises(MedxpError, match="not a valid parameter"):
        create_segmenter("slic", SIZE, n_cluster=5)
    with pytest.raises(MedxpError, match="at least 2"):
        create_segmenter("kmeans", SIZE, n_clusters=1)


# ----------------------------------------------------------------------------- grid


def grid_data() -> tuple[np.ndarray, np.ndarray]:
    """Three bright (class 1) and three dark (class 0) images; one dark image is labelled 1 (a mistake)."""
    images = np.stack([textured_image(i < 3, seed=i) for i in range(6)])
    labels = np.array([1, 1, 1, 0, 0, 1])
    return images, labels


def test_grid_has_one_row_per_image_and_a_column_per_method():
    images, labels = grid_data()

    figure, records = explanation_grid(RegionModel(), torch.from_numpy(images), torch.from_numpy(labels),
                                       ("dark", "bright"), per_class=2, methods=("slic", "kmeans"), num_samples=40)

    rows = len({record.index for record in records})
    assert isinstance(figure, Figure)
    assert rows == 4 and len(records) == rows * 2
    assert len(figure.axes) == rows * 3
    assert any(not record.correct for record in records)
    assert {record.method for record in records} == {"slic", "kmeans"}
    figure.savefig(io.BytesIO(), format="png")


def test_grid_titles_name_true_and_predicted_class_and_verdict():
    images, labels = grid_data()

    figure, _ = explanation_grid(RegionModel(), images, labels, ("dark", "bright"), per_class=2,
                                 methods=("slic",), num_samples=20)

    titles = [axes.get_title() for axes in figure.axes]
    assert any("true: bright" in title and "WRONG" in title for title in titles)
    assert any(title.startswith("slic") and "pred dark" in title for title in titles)


def test_examples_alternate_correct_and_wrong_per_class():
    labels = np.array([0, 0, 0, 0, 1, 1])
    probabilities = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.3, 0.7], [0.1, 0.9], [0.4, 0.6]])

    assert select_examples(labels, probabilities, per_class=2) == [0, 2, 4, 5]
    assert select_examples(labels, probabilities, per_class=3) == [0, 1, 2, 4, 5]


def quarter_segmenter(image_size: int, seed: int, **params):
    """A plug-in segmentation: the image's four quadrants."""
    def segment(image: np.ndarray) -> np.ndarray:
        rows, columns = np.indices(image.shape[:2])
        return (rows >= image.shape[0] // 2) * 2 + (columns >= image.shape[1] // 2)
    return segment


def test_default_methods_are_the_segmentation_registry_in_registration_order(monkeypatch):
    assert SEGMENTATIONS.in_registration_order() == ("quickshift", "slic", "kmeans")  # the grid's columns
    monkeypatch.setattr(SEGMENTATIONS, "_entries", {"quarters": quarter_segmenter})  # a plug-in, alone
    images, labels = grid_data()

    _, records = explanation_grid(RegionModel(), images, labels, ("dark", "bright"), per_class=1, num_samples=20)

    assert {record.method for record in records} == {"quarters"}
    assert {int(record.explanation.segments.max()) for record in records} == {3}


def test_grid_refuses_mismatched_labels():
    images, labels = grid_data()
    with pytest.raises(MedxpError, match="6 images but 5 labels"):
        explanation_grid(RegionModel(), images, labels[:5], ("dark", "bright"))


# ----------------------------------------------------------------------------- disc share


def test_disc_weight_share_on_a_hand_made_heat_map():
    heatmap = np.zeros((10, 10))
    heatmap[5, 5] = 2.0   # inside the disc
    heatmap[5, 6] = -5.0  # inside, but negative weight does not count
    heatmap[0, 0] = 1.0   # outside

    weight_share, area_share = disc_weight_share(heatmap, disc_x=5, disc_y=5, disc_radius=2)

    # Pixel centres within 2 of (5, 5): the centre, 4 at distance 1, 4 at sqrt 2, 4 at 2.
    assert weight_share == pytest.approx(2.0 / 3.0)
    assert area_share == pytest.approx(13 / 100)


def test_disc_weight_share_uses_column_for_x_and_row_for_y():
    heatmap = np.zeros((10, 20))
    heatmap[2, 15] = 1.0

    assert disc_weight_share(heatmap, disc_x=15, disc_y=2, disc_radius=1)[0] == 1.0
    assert disc_weight_share(heatmap, disc_x=2, disc_y=15, disc_radius=1)[0] == 0.0


def test_disc_weight_share_without_positive_weight_is_nan_and_bad_radius_is_refused():
    assert np.isnan(disc_weight_share(-np.ones((5, 5)), 2, 2, 1)[0])
    with pytest.raises(MedxpError, match="disc_radius"):
        disc_weight_share(np.ones((5, 5)), 2, 2, 0)


# ----------------------------------------------------------------------------- explain_model


@pytest.fixture
def tiny_run(tiny_config):
    data = create_datamodule(tiny_config)
    torch.manual_seed(0)
    model = inference_model(create_model(tiny_config.model, tiny_config.dataset), tiny_config, data)
    return model, data, tiny_config


def test_explain_model_logs_figures_records_and_disc_metrics(tiny_run):
    model, data, config = tiny_run
    tracker = NullTracker()

    summary = explain_model(model, data, config, tracker, per_class=1, num_samples=30, methods=("slic", "kmeans"))

    expected = {"explanations/lime_grid.png", "explanations/lime_slic.png", "explanations/lime_kmeans.png",
                "explanations/lime_records.json"}
    assert set(summary.artifacts) == expected <= set(tracker.artifacts)
    for path in expected - {"explanations/lime_records.json"}:
        tracker.artifacts[path].savefig(io.BytesIO(), format="png")
    records = tracker.artifacts["explanations/lime_records.json"]["records"]
    assert len(records) == 2 * 2 and all(r["image_id"].startswith("fundus_") for r in records)
    assert 0 < tracker.latest("lime_disc_area_share") < 0.2
    assert 0 <= tracker.latest("lime_disc_weight_share") <= 1
    assert summary.explain_metrics["lime_disc_area_share"] == pytest.approx(tracker.latest("lime_disc_area_share"))


def test_the_disc_check_is_a_plug_in_of_the_demo_whose_values_reach_records_and_metrics(tiny_run):
    model, data, config = tiny_run
    tracker = NullTracker()

    assert "optic_disc" in EXPLANATION_CHECKS  # registered by medxp.data.synthetic, not by the explainer
    summary = explain_model(model, data, config, tracker, per_class=1, num_samples=30, methods=("slic", "kmeans"))

    assert set(summary.explain_metrics) == {"lime_disc_weight_share", "lime_disc_area_share",
                                            "lime_disc_weight_share_slic", "lime_disc_weight_share_kmeans"}
    assert summary.explain_metrics == {name: tracker.latest(name) for name in summary.explain_metrics}
    logged = tracker.artifacts["explanations/lime_records.json"]
    assert logged["explain_metrics"] == summary.explain_metrics
    areas = [record["disc_area_share"] for record in logged["records"]]
    assert all(0 < area < 0.2 for area in areas)
    assert np.mean(areas) == pytest.approx(summary.explain_metrics["lime_disc_area_share"], abs=1e-5)


def test_explain_model_runs_whichever_registered_check_applies(tiny_run, monkeypatch):
    model, data, config = tiny_run
    seen = []

    def brightness_check(check_data, split, explained):
        seen.append((check_data, split, [image.method for image in explained]))
        return CheckResult({"top_row_weight": 0.25}, [{"top_row_weight": float(image.heatmap[0].sum())}
                                                      for image in explained])

    monkeypatch.setattr(EXPLANATION_CHECKS, "_entries", {"never": lambda *_: None, "top_row": brightness_check})
    tracker = NullTracker()

    summary = explain_model(model, data, config, tracker, per_class=1, num_samples=20, methods=("slic",))

    assert seen == [(data, "test", ["slic", "slic"])]
    assert summary.explain_metrics == {"lime_top_row_weight": 0.25} and tracker.latest("lime_top_row_weight") == 0.25
    assert not [name for name, _, _ in tracker.metrics if name.startswith("lime_disc")]
    records = tracker.artifacts["explanations/lime_records.json"]["records"]
    assert [record["top_row_weight"] for record in records] == pytest.approx(
        [float(record.explanation.heatmap[0].sum()) for record in summary.records], abs=1e-5)


def test_explain_model_skips_the_disc_check_without_geometry(tiny_run):
    model, data, config = tiny_run
    tracker = NullTracker()

    summary = explain_model(model, dataclasses.replace(data, synthetic=False), config, tracker, per_class=1,
                            num_samples=20, methods=("slic",))

    assert summary.explain_metrics == {}
    assert not [name for name, _, _ in tracker.metrics if name.startswith("lime_disc")]
    assert "explanations/lime_grid.png" in tracker.artifacts


def test_explain_model_refuses_an_unknown_split(tiny_run):
    model, data, config = tiny_run
    with pytest.raises(MedxpError, match="split 'holdout'"):
        explain_model(model, data, config, NullTracker(), split="holdout")
