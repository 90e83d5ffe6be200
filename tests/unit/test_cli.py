"""The CLI's contract for bad input: exit code 2 and one line naming the path or key."""

from __future__ import annotations

import mlflow
import pytest

from medxp.cli import main, parse_overrides
from medxp.errors import MedxpError


def run_cli(capsys, *argv):
    code = main(list(argv))
    return code, capsys.readouterr().err.strip()


@pytest.mark.parametrize("args, words", [
    (["--dataset", "nope"], ["unknown dataset 'nope'", "glaucoma"]),
    (["--dataset", "glaucoma", "--set", "train.lrr=1"], ["unknown key 'train.lrr'"]),
    (["--dataset", "glaucoma", "--set", "optimizer=lbfgs"], ["train.optimizer", "adam"]),
    (["--dataset", "glaucoma", "--set", "oops"], ["KEY=VALUE"]),
])
def test_config_errors_are_one_line_and_exit_2(capsys, mlflow_store, args, words):
    code, err = run_cli(capsys, "train", *args)
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("medxp: error:")
    for word in words:
        assert word in err


def test_unknown_model_fails_the_run_but_keeps_what_was_logged(capsys, mlflow_store, tiny_config, demo_root):
    code, err = run_cli(capsys, "train", "--dataset", "glaucoma", "--no-progress", "--set", f"data_dir={demo_root}",
                        "--set", "model=resnet19", "--set", "dataset.image_size=32")
    assert code == 2 and "unknown model 'resnet19'" in err and "small_cnn" in err
    [run] = mlflow.search_runs(experiment_names=["glaucoma"], output_format="list")
    assert run.info.status == "FAILED"
    assert "resnet19" in run.data.tags["medxp.error"]
    assert run.data.params["model.name"] == "resnet19"  # logged before the failure, still there
    assert run.data.tags["data.synthetic"] == "true"


def test_missing_data_folder_without_demo_is_named(capsys, mlflow_store, tmp_path):
    code, err = run_cli(capsys, "train", "--dataset", "glaucoma", "--set", f"data_dir={tmp_path}/nothing",
                        "--set", "data.demo=never")
    assert code == 2 and f"{tmp_path}/nothing" in err and "not found" in err


def test_overrides_split_on_spaces_and_drop_empty_values():
    assert parse_overrides(["lr=0.1", "model=", "a.b=1 c.d=2", ""]) == {"lr": "0.1", "a.b": "1", "c.d": "2"}
    with pytest.raises(MedxpError):
        parse_overrides(["=3"])
    with pytest.raises(MedxpError, match="'lr': expected KEY=VALUE"):
        parse_overrides(["lr", "0.1"])


def test_a_value_may_hold_spaces_up_to_the_next_key():
    rule = "max val_f1_macro where infer_ms <= 20"
    assert parse_overrides([f"search.select={rule}", "lr=0.1"]) == {"search.select": rule, "lr": "0.1"}
    assert parse_overrides([f"train.epochs=2 search.select={rule} dataset.class_names=[covid,normal]"]) == {
        "train.epochs": "2", "search.select": rule, "dataset.class_names": "[covid,normal]"}
