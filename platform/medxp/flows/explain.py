"""The explain flow (`medxp explain`): LIME explanations of a logged or registered model, in a run of their own."""

from __future__ import annotations

from medxp.config import ExperimentConfig
from medxp.explain import ExplainSummary, explain_model
from medxp.pipeline import open_logged_model
from medxp.tracking.base import Tracker


def explain_logged_model(config: ExperimentConfig, model_uri: str, tracker: Tracker, *, per_class: int = 2,
                         num_samples: int = 1000) -> ExplainSummary:
    """Records the data's context, loads the model and logs LIME explanations of a few test images per class.

    Args:
        config: The dataset's config (the data explained).
        model_uri: `models:/m-...`, `models:/<name>/<version>` or `models:/<name>@<alias>`.
        tracker: The run that records it (tagged `explained_model`).
        per_class: Images per class to explain.
        num_samples: LIME perturbations per image.

    Returns:
        What `medxp.explain.explain_model` logged.
    """
    data, model = open_logged_model(config, model_uri, tracker, {"explained_model": model_uri})
    return explain_model(model, data, config, tracker, per_class=per_class, num_samples=num_samples)
