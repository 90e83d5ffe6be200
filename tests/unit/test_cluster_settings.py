"""What cluster mode adds below the services: masked secrets in what runs record, and the node data check."""

from __future__ import annotations

import pytest

from medxp.errors import MedxpError
from medxp.recording import recorded_config, redacted_url
from medxp.search.trial import TrialContext, node_data


@pytest.mark.parametrize("url, shown", [
    ("postgresql+psycopg2://medxp:s3cr%40t@db:5432/optuna", "postgresql+psycopg2://medxp:***@db:5432/optuna"),
    ("postgresql+psycopg2://medxp@db:5432/optuna", "postgresql+psycopg2://medxp@db:5432/optuna"),
    ("sqlite:////tmp/study/optuna.db", "sqlite:////tmp/study/optuna.db"),
])
def test_a_password_in_a_storage_url_is_masked(url, shown):
    assert redacted_url(url) == shown


def test_the_recorded_config_masks_the_study_storage(tiny_config):
    config = tiny_config.replace({"search.storage": "postgresql://medxp:hunter2@db/optuna"})
    recorded = recorded_config(config)
    assert recorded["search"]["storage"] == "postgresql://medxp:***@db/optuna"
    assert "hunter2" not in repr(recorded)
    assert config.search.storage.endswith("hunter2@db/optuna")  # the search itself still has it


def test_a_node_whose_data_differs_names_the_path_and_both_fingerprints(tiny_config):
    context = TrialContext("", "", "", "study", "val_roc_auc", tiny_config.data.data_dir, "0123456789abcdef")
    with pytest.raises(MedxpError) as raised:
        node_data(tiny_config, context, None)
    message = str(raised.value)
    actual = node_data(tiny_config, TrialContext("", "", "", "study", "val_roc_auc"), None).fingerprint
    assert tiny_config.data.data_dir in message and "0123456789abcdef" in message and actual in message


def test_a_node_without_the_data_says_so(tiny_config, tmp_path):
    config = tiny_config.replace({"data.data_dir": str(tmp_path / "absent"), "data.demo": "never"})
    context = TrialContext("", "", "", "study", "val_roc_auc", str(tmp_path / "absent"), "0123456789abcdef")
    with pytest.raises(MedxpError, match="cannot read the search's data at .*absent.*0123456789abcdef"):
        node_data(config, context, None)
