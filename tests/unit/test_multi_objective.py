"""Multi-objective search without a Ray cluster: objectives and select rule parsing, config validation, the
study's record of several values, the Pareto front's selection (and its fallback), and the report's tables."""

from __future__ import annotations

import csv
import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from medxp.config import EvalConfig, SearchConfig, load_project
from medxp.errors import MedxpError
from medxp.objectives import (
    COST_METRICS,
    FrontTrial,
    Objective,
    available_metrics,
    objective_values,
    parse_objectives,
    parse_select,
    select_from_front,
)
from medxp.search.report import front_markdown, pareto_figure, search_outcome, search_plan, trials_table
from medxp.search.space import load_search_space
from medxp.search.study import (
    DUPLICATE_OF,
    EPOCH,
    EPOCH_OBJECTIVE,
    EPOCH_VALUES,
    FINISHED,
    MODEL_URI,
    OBJECTIVE,
    OBJECTIVE_VALUES,
    PARAMS,
    RUN_ID,
    PruningScheduler,
    StudySearcher,
    create_sampler,
    open_study,
)
from tests.conftest import SMALL_CNN

optuna.logging.set_verbosity(optuna.logging.WARNING)

TWO = ("val_accuracy:max", "infer_ms:min")
ACCURACY_AND_SPEED = parse_objectives(TWO)


# ---------------------------------------------------------------- objectives and the select rule


def test_objectives_parse_in_order_with_their_directions():
    objectives = parse_objectives(["val_f1_macro:max", "infer_ms:min", " model_params : min "])
    assert objectives == (Objective("val_f1_macro", "max"), Objective("infer_ms", "min"),
                          Objective("model_params", "min"))
    assert [o.optuna_direction for o in objectives] == ["maximize", "minimize", "minimize"]


@pytest.mark.parametrize("entries, message", [
    (["val_accuracy"], r"entry 'val_accuracy': expected <metric>:<max\|min>"),
    (["val_accuracy:up"], r"entry 'val_accuracy:up': expected <metric>:<max\|min>"),
    (["val_accuracy:max", "latency:min"], r"unknown metric 'latency'"),
    (["val_accuracy:max", "accuracy:min"], r"unknown metric 'accuracy'"),
    (["infer_ms:min", "val_accuracy:max"], r"the first objective is infer_ms:min; expected one ASHA prunes on"),
    (["val_precision_macro:max", "infer_ms:min"], r"first objective is val_precision_macro:max"),
    (["val_accuracy:min", "infer_ms:min"], r"first objective is val_accuracy:min"),
    (["val_accuracy:max", "infer_ms:min", "infer_ms:max"], r"infer_ms listed twice"),
])
def test_bad_objectives_name_the_key_and_what_was_expected(entries, message):
    with pytest.raises(MedxpError, match=r"'search.objectives'.*" + message):
        parse_objectives(entries)


def test_select_rules_parse_with_conditions_and_default_to_max_of_the_first():
    objectives = parse_objectives(["val_f1_macro:max", "infer_ms:min", "model_params:min"])
    assert parse_select("", objectives).text == "max val_f1_macro"
    rule = parse_select("max val_f1_macro where infer_ms <= 20 and model_params<1e6", objectives)
    assert rule.goal == "max" and rule.metric == "val_f1_macro"
    assert [(c.metric, c.operator, c.threshold) for c in rule.conditions] == [("infer_ms", "<=", 20.0),
                                                                              ("model_params", "<", 1e6)]
    assert rule.text == "max val_f1_macro where infer_ms <= 20 and model_params < 1e+06"
    assert parse_select("min infer_ms where val_f1_macro >= 0.8", objectives).goal == "min"


@pytest.mark.parametrize("rule, message", [
    ("best val_accuracy", "expected max|min <objective>"),
    ("max", "expected max|min <objective>"),
    ("max val_accuracy infer_ms", "expected max|min <objective>"),
    ("max val_accuracy where", "condition '' is not <objective> <op> <number>"),
    ("max val_accuracy where infer_ms == 20", "condition 'infer_ms == 20' is not"),
    ("max val_accuracy where infer_ms <= fast", "condition 'infer_ms <= fast' is not"),
    ("max val_accuracy where infer_ms <= nan", "condition 'infer_ms <= nan' is not"),
    ("max model_params", "model_params is not an objective"),
    ("max val_accuracy where train_seconds < 60", "train_seconds is not an objective"),
])
def test_bad_select_rules_name_the_key_and_the_grammar(rule, message):
    with pytest.raises(MedxpError, match="'search.select'") as error:
        parse_select(rule, ACCURACY_AND_SPEED)
    assert message in str(error.value)


def test_objective_values_read_validation_metrics_and_costs_in_order():
    values = objective_values(parse_objectives(["val_roc_auc:max", "model_params:min", "infer_ms:min"]),
                              {"roc_auc": 0.9, "accuracy": 0.8}, {"infer_ms": 2.5, "model_params": 1200.0})
    assert values == [0.9, 1200.0, 2.5]
    with pytest.raises(MedxpError, match="the run recorded no val_pr_auc; expected one of val_roc_auc"):
        objective_values(parse_objectives(["val_roc_auc:max", "val_pr_auc:max"]), {"roc_auc": 0.9}, {})


def test_the_declared_metrics_are_those_an_evaluation_records():
    from medxp.training.evaluate import evaluate_predictions, fit_prediction_rule

    rng = np.random.default_rng(0)

    def recorded(classes: list[str], positive: str, calibration: str) -> set[str]:
        labels = rng.integers(0, len(classes), 80)
        probabilities = rng.dirichlet(np.ones(len(classes)), 80)
        settings = EvalConfig(bootstrap_resamples=5, calibration=calibration)
        rule = fit_prediction_rule(labels, probabilities, classes, positive, settings)
        metrics = evaluate_predictions("valid", labels, probabilities, classes, settings, with_intervals=False,
                                       rule=rule).metrics
        return {f"val_{name}" for name in metrics} | set(COST_METRICS)

    for binary in (True, False):
        for calibrated in (True, False):
            classes = ["a", "b"] if binary else ["a", "b", "c"]
            got = recorded(classes, "b" if binary else "", "temperature" if calibrated else "none")
            assert got == set(available_metrics(binary, calibrated)), (binary, calibrated)


# ---------------------------------------------------------------- config validation


def config_with(**overrides):
    return load_project("glaucoma", overrides, experiment=SMALL_CNN)


def test_a_config_takes_objectives_a_select_rule_and_nsga2():
    config = config_with(**{"search.objectives": "[val_f1_macro:max, infer_ms:min]",
                            "search.select": "max val_f1_macro where infer_ms <= 20", "search.sampler": "nsga2"})
    assert config.search.objectives == ("val_f1_macro:max", "infer_ms:min")
    assert config.search.select == "max val_f1_macro where infer_ms <= 20"
    assert isinstance(create_sampler(config.search, 0), optuna.samplers.NSGAIISampler)
    assert config_with().search.objectives == () and config_with().search.select == ""


def test_the_nsga2_sampler_pickles_and_samples_on_after_a_round_trip(tmp_path):
    """Tune pickles the searcher with its study and sampler into tuner.pkl when a search starts; Optuna's
    genetic samplers hold a thread lock (from 5.1). The round trip keeps the sampler's state and gives it
    a working lock back."""
    import ray.cloudpickle

    settings = config_with(**{"search.objectives": "[val_f1_macro:max, infer_ms:min]", "search.sampler": "nsga2",
                              "search.startup_trials": 4, "search.seed": 3}).search
    sampler = create_sampler(settings, 0)
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'optuna.db'}", directions=["maximize", "minimize"],
                                sampler=sampler)
    study.optimize(lambda trial: (trial.suggest_float("x", 0, 1), trial.suggest_float("y", 0, 1)), n_trials=6)
    copy = ray.cloudpickle.loads(ray.cloudpickle.dumps(study))  # what tuner.pkl holds
    assert copy.sampler is not sampler and copy.sampler.population_size == 4
    locks = {name for name, value in vars(sampler).items() if hasattr(value, "acquire")}
    assert {name for name, value in vars(copy.sampler).items() if hasattr(value, "acquire")} == locks
    for name in locks:  # fresh, free locks
        assert getattr(copy.sampler, name) is not getattr(sampler, name) and getattr(copy.sampler, name).acquire(False)
        getattr(copy.sampler, name).release()
    copy.optimize(lambda trial: (trial.suggest_float("x", 0, 1), trial.suggest_float("y", 0, 1)), n_trials=2)
    assert len(copy.trials) == 8 and all(t.state == TrialState.COMPLETE for t in copy.trials)


@pytest.mark.parametrize("overrides, message", [
    ({"search.objectives": "[val_accuracy:max, infer_ms:fast]"}, "overrides: 'search.objectives' entry "
                                                                 "'infer_ms:fast': expected <metric>:<max|min>"),
    ({"search.objectives": "[val_accuracy:max, val_bogus:max]"}, "unknown metric 'val_bogus'; expected one this "
                                                                 "task's trials record: val_accuracy"),
    ({"search.objectives": "[infer_ms:min, val_accuracy:max]"}, "the first objective is infer_ms:min"),
    ({"search.objectives": "[val_accuracy:max, infer_ms:min]", "search.select": "max val_accuracy where x"},
     "'search.select' = 'max val_accuracy where x': condition 'x' is not"),
    ({"search.objectives": "[val_accuracy:max, infer_ms:min]", "search.select": "min model_params"},
     "model_params is not an objective"),
    ({"search.select": "max val_accuracy"}, "'search.select' = 'max val_accuracy': expected it empty"),
    ({"search.objectives": "[val_accuracy:max, val_ece_calibrated:min]"}, "unknown metric 'val_ece_calibrated'"),
    ({"search.sampler": "cmaes"}, "'search.sampler' = 'cmaes': expected one of tpe, random, nsga2"),
])
def test_bad_objective_settings_are_refused_when_the_config_loads(overrides, message):
    with pytest.raises(MedxpError) as error:
        config_with(**overrides)
    assert message in str(error.value)


def test_binary_only_metrics_are_refused_for_a_multi_class_task():
    settings = {"search.objectives": "[val_accuracy:max, val_sensitivity:max]"}
    assert config_with(**settings).search.objectives[1] == "val_sensitivity:max"
    with pytest.raises(MedxpError, match="unknown metric 'val_sensitivity'; expected one this task's trials record"):
        load_project("fetal_health", {**settings, "search.cv_folds": 0, "search.refit": False})  # judged on valid


def test_loading_a_config_with_objectives_imports_neither_torch_nor_optuna():
    code = ("import sys; from medxp.config import load_project; "
            "c = load_project('glaucoma', {'search.objectives': '[val_accuracy:max, infer_ms:min]', "
            "'search.select': 'max val_accuracy where infer_ms <= 5'}); "
            "print('torch' in sys.modules, 'optuna' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "False"]


# ---------------------------------------------------------------- selection on the front


FRONT = [FrontTrial(0, {"val_accuracy": 0.90, "infer_ms": 30.0}),
         FrontTrial(3, {"val_accuracy": 0.85, "infer_ms": 12.0}),
         FrontTrial(5, {"val_accuracy": 0.80, "infer_ms": 4.0}),
         FrontTrial(7, {"val_accuracy": 0.85, "infer_ms": 12.0})]


def select(rule: str):
    return select_from_front(FRONT, parse_select(rule, ACCURACY_AND_SPEED), ACCURACY_AND_SPEED)


def test_the_rule_picks_the_best_qualified_front_trial():
    chosen = select("max val_accuracy where infer_ms <= 20")
    assert chosen.number == 3 and chosen.qualified  # 3 and 7 tie: the lower number
    assert chosen.text == ("rule `max val_accuracy where infer_ms <= 20`: trial 3 (val_accuracy 0.85, infer_ms 12), "
                           "the max val_accuracy of the 3 of 4 front trial(s) with infer_ms <= 20")
    assert select("min infer_ms").number == 5
    assert select("min infer_ms where val_accuracy > 0.82").number == 3
    assert select("max val_accuracy").number == 0
    assert select("max val_accuracy where infer_ms < 12 and val_accuracy >= 0.8").number == 5


def test_when_no_front_trial_qualifies_the_best_on_the_first_objective_is_chosen_and_it_says_so():
    chosen = select("min infer_ms where infer_ms < 1")
    assert chosen.number == 0 and not chosen.qualified
    assert chosen.text == ("rule `min infer_ms where infer_ms < 1`: no trial of the front (4 trial(s)) has "
                           "infer_ms < 1; fell back to trial 0, the front's best val_accuracy (val_accuracy 0.9, "
                           "infer_ms 30)")
    empty = select_from_front([], parse_select("", ACCURACY_AND_SPEED), ACCURACY_AND_SPEED)
    assert empty.number is None and "no finished trial" in empty.text


# ---------------------------------------------------------------- the study's record


def make_searcher(tmp_path: Path, choices: str = "[0.1, 0.2, 0.3]") -> StudySearcher:
    (tmp_path / "space.yaml").write_text(f"lr: {{type: categorical, choices: {choices}}}\n")
    study = open_study("mo", f"sqlite:///{tmp_path / 'optuna.db'}",
                       SearchConfig(objectives=TWO, sampler="random", seed=0))
    return StudySearcher(load_search_space(str(tmp_path / "space.yaml")), study,
                         PruningScheduler(max_t=3, grace_period=1, reduction_factor=2),
                         on_outcome=lambda outcome: None)


def finish(searcher: StudySearcher, tune_id: str, accuracy: float, milliseconds: float) -> None:
    for epoch in (1, 2):
        searcher.on_trial_result(tune_id, {OBJECTIVE: accuracy - 0.1 * (3 - epoch), EPOCH: epoch})
    searcher.on_trial_complete(tune_id, {OBJECTIVE: accuracy, OBJECTIVE_VALUES: [accuracy, milliseconds], EPOCH: 3,
                                         FINISHED: True, EPOCH_OBJECTIVE: accuracy, RUN_ID: f"run-{tune_id}",
                                         MODEL_URI: f"models:/m-{tune_id}"})


def test_a_multi_objective_study_records_each_trials_values_and_per_epoch_first_objective(tmp_path):
    searcher = make_searcher(tmp_path)
    study = searcher.study
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert study.user_attrs["objectives"] == list(TWO)
    for lr in (0.1, 0.2, 0.3):
        study.enqueue_trial({"lr": lr})
    searcher.suggest("a")
    finish(searcher, "a", 0.8, 5.0)
    searcher.suggest("b")
    searcher._scheduler.pruned.add("b")
    searcher.on_trial_result("b", {OBJECTIVE: 0.3, EPOCH: 1})
    searcher.on_trial_complete("b", {OBJECTIVE: 0.3, EPOCH: 1})
    searcher.suggest("c")
    searcher.on_trial_complete("c", {OBJECTIVE: 0.9, OBJECTIVE_VALUES: [0.9, float("nan")], EPOCH: 3,
                                     FINISHED: True})
    done, pruned, failed = study.trials
    assert done.state == TrialState.COMPLETE and done.values == [0.8, 5.0]
    assert done.intermediate_values == {}
    assert done.user_attrs[EPOCH_VALUES] == pytest.approx({"1": 0.6, "2": 0.7, "3": 0.8})
    assert pruned.state == TrialState.PRUNED and pruned.values is None and pruned.user_attrs[EPOCH_VALUES] == {"1": 0.3}
    assert failed.state == TrialState.FAIL and "objective_values is [0.9, nan]" in failed.user_attrs["reason"]


def test_a_twin_in_a_multi_objective_study_takes_its_values_and_resumed_asha_sees_its_epochs(tmp_path):
    searcher = make_searcher(tmp_path, "[0.1, 0.2]")
    study = searcher.study
    for _ in range(2):
        study.enqueue_trial({"lr": 0.1})
    searcher.suggest("a")
    finish(searcher, "a", 0.8, 5.0)
    assert searcher.suggest("b")[PARAMS] == {"lr": 0.2}
    twin = study.trials[1]
    assert twin.user_attrs[DUPLICATE_OF] == 0 and twin.values == [0.8, 5.0]
    assert twin.user_attrs[EPOCH_VALUES] == study.trials[0].user_attrs[EPOCH_VALUES]
    scheduler = PruningScheduler(max_t=3, grace_period=1, reduction_factor=2)
    scheduler.seed_rungs(study)
    rungs = {milestone: dict(recorded) for milestone, recorded in scheduler._brackets[0]._rungs}
    assert rungs[1] == {"study-trial-0": pytest.approx(0.6)} and rungs[2] == {"study-trial-0": pytest.approx(0.7)}


def test_open_study_refuses_to_resume_under_other_objectives(tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    open_study("mo", storage, SearchConfig(objectives=TWO))
    assert len(open_study("mo", storage, SearchConfig(objectives=TWO)).directions) == 2  # same: resumes
    with pytest.raises(MedxpError, match=r"study 'mo': it was created with the direction\(s\) maximize, minimize, "
                                         r"but 'search.objectives' = \['\(single objective\)'\] asks maximize"):
        open_study("mo", storage, SearchConfig())
    with pytest.raises(MedxpError, match=r"created with 'search.objectives' = \['val_accuracy:max', 'infer_ms:min'\]"
                                         r", but the config asks \['val_accuracy:max', 'model_params:min'\]"):
        open_study("mo", storage, SearchConfig(objectives=("val_accuracy:max", "model_params:min")))
    open_study("single", storage, SearchConfig())
    with pytest.raises(MedxpError, match="study 'single': it was created with the direction\\(s\\) maximize, but"):
        open_study("single", storage, SearchConfig(objectives=TWO))


# ---------------------------------------------------------------- the result and the report


def front_study(tmp_path: Path) -> optuna.Study:
    """Trials 0-3 trained (values below), 4 a twin of 1, 5 pruned: the front is 0, 1 and 2."""
    study = optuna.create_study(directions=["maximize", "minimize"], storage=f"sqlite:///{tmp_path / 'o.db'}")
    for number, values in enumerate([(0.9, 30.0), (0.85, 12.0), (0.8, 4.0), (0.7, 20.0), (0.85, 12.0)]):
        trial = study.ask({"lr": optuna.distributions.CategoricalDistribution([0.1, 0.2, 0.3, 0.4])})
        trial.set_user_attr("model_uri", f"models:/m-{number}")
        if number == 4:
            trial.set_user_attr(DUPLICATE_OF, 1)
        study.tell(trial, list(values))
    study.tell(study.ask(), state=TrialState.PRUNED)
    return study


def test_the_result_holds_the_front_without_twins_and_the_selected_trial(tmp_path):
    from medxp.search.runner import _result, pareto_trials

    study = front_study(tmp_path)
    assert [t.number for t in pareto_trials(study, study.get_trials())] == [0, 1, 2]
    (tmp_path / "space.yaml").write_text("lr: {type: categorical, choices: [0.1, 0.2, 0.3, 0.4]}\n")
    config = config_with(**{"search.objectives": list(TWO), "search.select": "max val_accuracy where infer_ms <= 15"})
    result = _result(study, load_search_space(str(tmp_path / "space.yaml")), config, config, "sqlite://", "parent",
                     0, 1.0)
    assert result.multi_objective and result.best_trial_number == 1 and result.best_value == 0.85
    assert result.best_values == {"val_accuracy": 0.85, "infer_ms": 12.0}
    assert result.best_model_uri == "models:/m-1" and "trial 1 (val_accuracy 0.85, infer_ms 12)" in result.selection
    front = result.pareto_front
    assert list(front.columns) == ["number", "val_accuracy", "infer_ms", "mlflow_run_id", "model_uri", "selected"]
    assert front["number"].tolist() == [0, 1, 2] and front["selected"].tolist() == [False, True, False]
    assert [number for number, _, _ in result.ranked_models] == [0, 1, 2, 3]  # by the first objective

    unreachable = config.replace({"search.select": "max val_accuracy where infer_ms < 1"})
    fallback = _result(study, load_search_space(str(tmp_path / "space.yaml")), unreachable, unreachable,
                       "sqlite://", "parent", 0, 1.0)
    assert fallback.best_trial_number == 0 and "fell back to trial 0" in fallback.selection


def test_the_report_tables_plot_and_description_of_a_multi_objective_search(tmp_path):
    from medxp.search.runner import _result

    study = front_study(tmp_path)
    (tmp_path / "space.yaml").write_text("lr: {type: categorical, choices: [0.1, 0.2, 0.3, 0.4]}\n")
    space = load_search_space(str(tmp_path / "space.yaml"))
    config = config_with(**{"search.objectives": list(TWO), "search.select": "min infer_ms where val_accuracy >= 0.8",
                            "search.sampler": "nsga2"})
    result = _result(study, space, config, config, "sqlite://", "parent", 0, 1.0)
    rows = list(csv.DictReader(io.StringIO(trials_table(study.get_trials(), ["val_accuracy", "infer_ms"]))))
    assert rows[2]["val_accuracy"] == "0.8" and rows[2]["infer_ms"] == "4.0" and rows[5]["val_accuracy"] == ""
    assert "value" not in rows[0]
    table = front_markdown(result.pareto_front, ["val_accuracy", "infer_ms"])
    assert "| trial | val_accuracy | infer_ms | MLflow run | chosen |" in table
    assert "| 2 | 0.8 | 4 |  | **yes** |" in table
    figure = pareto_figure([t for t in study.trials if t.values], ["val_accuracy", "infer_ms"], {0, 1, 2}, 2,
                           ["max", "min"])
    assert figure.axes[0].get_ylabel() == "infer_ms (lower is better)"
    labels = [text.get_text() for text in figure.axes[0].get_legend().get_texts()]
    assert labels == ["trained trials", "Pareto front", "chosen: trial 2"]
    plan = search_plan(config, space, "mo", "sqlite:///x", 4, "glaucoma-small_cnn", True)
    assert "`val_accuracy` (maximised), `infer_ms` (minimised)" in plan
    assert "**ASHA prunes on the first objective** only: validation accuracy" in plan
    assert "`min infer_ms where val_accuracy >= 0.8` among the front" in plan
    assert "Optuna NSGA-II (seed 42; generations of 4 trials)" in plan
    outcome = search_outcome(result, config, ["search/pareto_front.png"])
    assert "Chosen: **trial 2** by `search.select`: rule `min infer_ms where val_accuracy >= 0.8`: trial 2" in outcome
    assert "Pareto front (`search/pareto_front.csv`, plot `search/pareto_front.png`)" in outcome
    assert table.strip() in outcome
