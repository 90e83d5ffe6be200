"""Serving's decoding of one file and its answer table, without MLflow's server: PNG, JPEG, DICOM, bad input."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.exceptions import MlflowException
from PIL import Image
from torch import nn

from medxp.data.images import decode_image
from medxp.errors import MedxpError
from medxp.models import InferenceModel
from medxp.serving import (ModelFacts, ModelIdentity, answer, decode_file, encode_file, file_bytes, image_table,
                           model_identity)

RNG = np.random.default_rng(7)


def image_file(path: Path, mode: str = "RGB", size: tuple[int, int] = (40, 30), **options) -> Path:
    """A random picture (smooth enough for JPEG to matter) saved at `path`."""
    base = RNG.integers(0, 256, size=(size[1] // 5 + 1, size[0] // 5 + 1, 3), dtype=np.uint8)
    Image.fromarray(base).resize(size, Image.Resampling.BICUBIC).convert(mode).save(path, **options)
    return path


def dicom_bytes(pixels: np.ndarray, photometric: str = "MONOCHROME2", **elements) -> bytes:
    """An uncompressed single-frame 16-bit grey DICOM file, written by pydicom."""
    from pydicom import dcmwrite
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID, dataset.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    dataset.Modality = "OT"
    dataset.Rows, dataset.Columns = pixels.shape
    dataset.SamplesPerPixel, dataset.PhotometricInterpretation = 1, photometric
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit, dataset.PixelRepresentation = 16, 12, 11, 0
    for key, value in elements.items():
        setattr(dataset, key, value)
    dataset.PixelData = pixels.astype(np.uint16).tobytes()
    buffer = io.BytesIO()
    dcmwrite(buffer, dataset, enforce_file_format=True)
    return buffer.getvalue()


@pytest.mark.parametrize("suffix, options", [(".png", {}), (".jpg", {"quality": 80})], ids=["png", "jpeg"])
@pytest.mark.parametrize("mode, channels", [("RGB", 3), ("L", 3), ("RGB", 1)], ids=["rgb", "grey-to-rgb", "rgb-to-grey"])
def test_a_file_decodes_exactly_as_evaluation_reads_it(tmp_path, suffix, options, mode, channels):
    path = image_file(tmp_path / f"picture{suffix}", mode, **options)
    served = decode_file(base64.b64decode(encode_file(path)), 24, channels)
    evaluated = torch.tensor(decode_image(path, 24, channels)).float() / 255.0  # medxp.pipeline.model_inputs
    assert served.dtype == np.float32 and served.shape == (channels, 24, 24)
    np.testing.assert_array_equal(served, evaluated.numpy())
    if mode == "L" and channels == 3:
        np.testing.assert_array_equal(served[0], served[2])


def test_base64_may_come_as_a_data_url_url_safe_or_wrapped_and_bytes_are_the_file(tmp_path):
    raw = image_file(tmp_path / "p.png").read_bytes()
    text = base64.b64encode(raw).decode()
    wrapped = "\n".join(text[i:i + 76] for i in range(0, len(text), 76))
    for value in (text, f"data:image/png;base64,{text}", base64.urlsafe_b64encode(raw).decode(), wrapped, raw):
        assert file_bytes(value) == raw


@pytest.mark.parametrize("value, message", [
    ("not base64!", r"row 3: not base64 .*expected a base64 string of a PNG, JPEG or DICOM file"),
    ("", r"row 3: empty string; expected a base64 string"),
    (None, r"row 3: got nothing; expected a base64 string"),
    (12.5, r"row 3: got float '12.5'; expected a base64 string"),
], ids=["not-base64", "empty", "missing", "number"])
def test_a_cell_that_is_not_base64_is_refused_naming_its_row_and_what_was_expected(value, message):
    with pytest.raises(MedxpError, match=message):
        file_bytes(value, "row 3")


def test_truncated_corrupt_and_unknown_files_are_refused_naming_what_was_expected(tmp_path):
    png = image_file(tmp_path / "p.png").read_bytes()
    jpeg = image_file(tmp_path / "p.jpg").read_bytes()
    for broken in (png[: len(png) // 2], jpeg[: len(jpeg) // 2], b"plain text, not a picture"):
        with pytest.raises(MedxpError, match=r"^x: unreadable image \(.+\); expected a PNG, JPEG or DICOM file$"):
            decode_file(broken, 16, 3, "x")
    dicom = dicom_bytes(np.arange(64).reshape(8, 8) * 10)
    with pytest.raises(MedxpError, match=r"^x: unreadable DICOM file .*expected a complete single-frame DICOM image"):
        decode_file(dicom[:-40], 8, 1, "x")


def window_linear(values: np.ndarray, center: float, width: float) -> np.ndarray:
    return np.clip((values - (center - 0.5)) / (width - 1) + 0.5, 0, 1)


def test_dicom_applies_rescale_and_window_and_inverts_monochrome1():
    raw = (np.arange(16 * 16).reshape(16, 16) * 15).astype(np.uint16)  # 0 .. 3825 of 12 bits
    elements = {"RescaleSlope": 2, "RescaleIntercept": -100, "WindowCenter": 4000, "WindowWidth": 9000}
    expected = np.round(window_linear(raw * 2.0 - 100, 4000, 9000) * 255) / 255.0
    grey = decode_file(dicom_bytes(raw, **elements), 16, 1)
    np.testing.assert_allclose(grey[0], expected, atol=1e-6)
    assert 0.0 < grey.min() < 0.1 and 0.8 < grey.max() < 1.0  # the window, not the image's own range

    inverted = decode_file(dicom_bytes(raw, "MONOCHROME1", **elements), 16, 1)
    np.testing.assert_allclose(inverted, 1.0 - grey, atol=1 / 255 + 1e-6)
    assert inverted[0, 0, 0] > 0.9  # the lowest value is bright in MONOCHROME1

    as_rgb = decode_file(dicom_bytes(raw, **elements), 8, 3)  # a grey file for an RGB model, resized
    assert as_rgb.shape == (3, 8, 8)
    np.testing.assert_array_equal(as_rgb[0], as_rgb[1])


def test_dicom_without_a_window_spans_its_own_range():
    raw = (np.arange(100).reshape(10, 10) + 500).astype(np.uint16)
    pixels = decode_file(dicom_bytes(raw), 10, 1)
    assert pixels.min() == 0.0 and pixels.max() == 1.0
    np.testing.assert_allclose(pixels[0], np.round((raw - 500) / 99 * 255) / 255, atol=1e-6)


class Scores(nn.Module):
    """p(class 1) = the mean pixel, so a white image is class 1 and a black one class 0."""

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        mean = inputs.flatten(1).mean(1, keepdim=True).clamp(1e-4, 1 - 1e-4)
        return torch.log(torch.cat([1 - mean, mean], 1))


def served_model(threshold: float | None = 0.3) -> InferenceModel:
    return InferenceModel(Scores(), [0.0] * 3, [1.0] * 3, threshold=threshold,
                          positive_index=None if threshold is None else 1, class_names=("normal", "glaucoma"),
                          input_shape=(3, 8, 8))


def test_the_answer_table_gives_each_row_its_probabilities_label_or_error(tmp_path):
    model = served_model(threshold=0.3)
    facts, identity = ModelFacts.of(model), ModelIdentity("glaucoma-classifier-demo", "4")
    buffer = io.BytesIO()
    Image.new("L", (8, 8), 102).save(buffer, format="PNG")  # 102/255 = 0.4: above the threshold 0.3
    grey = base64.b64encode(buffer.getvalue()).decode()
    request = pd.DataFrame({"image": [grey, "%%%", encode_file(image_file(tmp_path / "p.png"))[:60]]},
                           index=[10, 11, 12])
    table = answer(model, request, facts, identity)
    assert list(table.columns) == ["prob_normal", "prob_glaucoma", "label", "threshold", "model_name",
                                   "model_version", "error"]
    assert list(table.index) == [10, 11, 12]
    assert table.loc[10, "prob_glaucoma"] == pytest.approx(0.4, abs=1e-3) and table.loc[10, "error"] == ""
    assert table.loc[10, "label"] == "glaucoma"  # the stored threshold, not the arg-max (which says normal)
    assert table["threshold"].tolist() == [0.3] * 3
    assert table[["model_name", "model_version"]].drop_duplicates().values.tolist() == [["glaucoma-classifier-demo",
                                                                                         "4"]]
    assert "not base64" in table.loc[11, "error"] and "unreadable image" in table.loc[12, "error"]
    assert table.loc[[11, 12], ["prob_normal", "prob_glaucoma"]].isna().all().all()
    assert table.loc[[11, 12], "label"].tolist() == ["", ""]

    argmax = answer(served_model(threshold=None), {"image": np.array([grey], dtype=object)}, facts, identity)
    assert argmax.loc[0, "label"] == "normal" and np.isnan(argmax.loc[0, "threshold"])


def test_tensors_still_get_probabilities_and_bad_requests_an_invalid_parameter_error():
    model = served_model()
    facts = ModelFacts.of(model)
    pixels = np.full((2, 3, 8, 8), 0.25, dtype=np.float32)
    np.testing.assert_allclose(answer(model, pixels, facts, ModelIdentity()), [[0.75, 0.25]] * 2, rtol=1e-5)
    flat = pd.DataFrame(pixels.reshape(2, -1))
    assert answer(model, flat, facts, ModelIdentity()).shape == (2, 2)
    for empty, expected in ((pd.DataFrame({"image": []}), "empty request"), ({"image": []}, "empty request"),
                            (np.zeros((0, 3, 8, 8), np.float32), "empty request"),
                            (np.zeros((2, 3, 9, 9), np.float32), r"shape \[2, 3, 9, 9\]"),
                            ({"pixels": [1]}, "no 'image'")):
        with pytest.raises(MlflowException, match=expected) as raised:
            answer(model, empty, facts, ModelIdentity())
        assert raised.value.error_code == "INVALID_PARAMETER_VALUE"
        assert "expected" in raised.value.message
    with pytest.raises(MlflowException, match="not image files"):
        image_table(InferenceModel(Scores(), [0.0], [1.0]), pd.Series(["x"]), ModelFacts(), ModelIdentity())


def test_the_identity_of_a_folder_that_is_not_a_model_is_empty_and_never_raises(tmp_path):
    assert model_identity(tmp_path) == ModelIdentity("", "")
