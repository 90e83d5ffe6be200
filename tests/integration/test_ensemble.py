"""Ensembles of tiny trained models: averaged probabilities, one pyfunc model, registration, mismatches."""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from medxp.errors import MedxpError
from medxp.flows.ensemble import build_ensemble, run_ensemble
from medxp.models import EnsembleModel, MemberInfo, load_inference_model
from medxp.pipeline import run_experiment
from medxp.tracking.mlflow_flavor import png_base64
from medxp.tracking.mlflow_tracker import MlflowTracker

pytestmark = pytest.mark.slow


def _train(config, seed: int, **overrides) -> str:
    """A one-epoch tiny model logged in its own run; returns its `models:/m-...` URI."""
    with MlflowTracker.start("glaucoma", run_name=f"member-{seed}") as tracker:
        result = run_experiment(config.replace({"train.epochs": 1, "train.seed": seed, **overrides}), tracker,
                                progress=False)
    return result.model_uri


def test_ensemble_averages_members_logs_as_one_pyfunc_and_registers(tiny_config, mlflow_store):
    uris = [_train(tiny_config, seed) for seed in (1, 2)]
    mlflow.register_model(uris[0], "member-demo")
    mlflow.MlflowClient().set_registered_model_alias("member-demo", "champion", "1")

    ensemble = build_ensemble(["models:/member-demo/1", uris[1]])
    assert ensemble.class_names == ("normal", "abnormal") and ensemble.input_shape == (3, 32, 32)
    images = torch.rand(4, 3, 32, 32)
    members = [load_inference_model(uri) for uri in uris]
    with torch.no_grad():
        expected = torch.stack([member(images) for member in members]).mean(0).numpy()
        np.testing.assert_allclose(ensemble(images).numpy(), expected, rtol=1e-5, atol=1e-6)

    with MlflowTracker.start("glaucoma", run_name="ensemble") as tracker:
        result = run_ensemble(tiny_config, ["models:/member-demo@champion", uris[1]], tracker, register=True)
    run = mlflow.get_run(tracker.run_id)
    assert run.data.tags["ensemble.size"] == "2" and 0 <= run.data.metrics["test_accuracy"] <= 1
    member_params = [mlflow.get_run(mlflow.get_logged_model(uri.removeprefix("models:/")).source_run_id)
                     .data.metrics["model_params"] for uri in uris]
    assert run.data.metrics["model_params"] == sum(member_params) and run.data.metrics["infer_ms"] > 0
    assert result.registered_name == "glaucoma-classifier-demo" and result.registered_version == "1"

    version = mlflow.register_model(result.model_uri, "ensemble-demo").version
    # Image files (base64 PNGs of 8-bit pixels) get medxp.serving's answer table from the ensemble too.
    quantized = torch.round(images[:2] * 255) / 255
    with torch.no_grad():
        expected_files = torch.stack([member(quantized) for member in members]).mean(0).numpy()
    for uri in (result.model_uri, f"models:/ensemble-demo/{version}", "models:/glaucoma-classifier-demo/1"):
        loaded = mlflow.pyfunc.load_model(uri)
        for batch in (1, 4):
            predicted = loaded.predict(images[:batch].numpy())
            np.testing.assert_allclose(predicted, expected[:batch], rtol=1e-5, atol=1e-6)
        table = loaded.predict(pd.DataFrame({"image": [png_base64(image) for image in quantized.numpy()]}))
        np.testing.assert_allclose(table[["prob_normal", "prob_abnormal"]], expected_files, rtol=1e-5, atol=1e-6)
        assert table["error"].tolist() == ["", ""] and set(table["label"]) <= {"normal", "abnormal"}
    reloaded = load_inference_model(f"models:/ensemble-demo/{version}")
    assert isinstance(reloaded, EnsembleModel) and len(reloaded.members) == 2
    # The binary ensemble's own operating point, chosen on valid, is logged and travels with the model.
    assert run.data.tags["eval.threshold_split"] == "valid" and "test_op_sensitivity" in run.data.metrics
    assert reloaded.threshold == pytest.approx(run.data.metrics["operating_threshold"])
    assert reloaded.positive_index == 1 and reloaded.operating_point == "youden"

    smaller = _train(tiny_config, 3, **{"dataset.image_size": 24})
    with pytest.raises(MedxpError, match="input shape") as raised:
        build_ensemble([uris[0], smaller])
    assert uris[0] in str(raised.value) and smaller in str(raised.value)


class _Constant(nn.Module):
    def __init__(self, probabilities: list[float]) -> None:
        super().__init__()
        self.probabilities = torch.tensor(probabilities)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.probabilities.expand(len(inputs), -1)


def test_members_with_other_classes_or_outputs_are_refused():
    models = [_Constant([0.2, 0.8]), _Constant([0.6, 0.4])]
    ensemble = EnsembleModel(models)
    np.testing.assert_allclose(ensemble(torch.zeros(3, 1, 2, 2)).numpy(), [[0.4, 0.6]] * 3)
    with pytest.raises(MedxpError, match="class names") as raised:
        EnsembleModel(models, [MemberInfo("models:/a/1", ("normal", "abnormal")),
                               MemberInfo("models:/b/1", ("abnormal", "normal"))])
    assert "models:/a/1" in str(raised.value) and "models:/b/1" in str(raised.value)
    with pytest.raises(MedxpError, match="numbers of classes"):
        EnsembleModel([_Constant([0.5, 0.5]), _Constant([0.2, 0.3, 0.5])])(torch.zeros(1, 1, 2, 2))
    with pytest.raises(MedxpError, match="no member"):
        EnsembleModel([])
