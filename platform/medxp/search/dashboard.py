"""`medxp dashboard`: optuna-dashboard on a project's study storage, to watch a running search live.

The storage is the one the search writes (`search.storage`, `$MEDXP_SEARCH_STORAGE`, else
`optuna.db` beside the MLflow store); the dashboard shows every study in it (trials as they finish,
pruned ones, intermediate values per epoch, parameter importances). It binds to 127.0.0.1 unless
told otherwise: the study holds the searched configs, so it is not published to the network by default.
"""

from __future__ import annotations

import logging
from pathlib import Path

import optuna

from medxp.config import ExperimentConfig
from medxp.errors import MedxpError
from medxp.recording import redacted_url
from medxp.search.runner import absolute_tracking_uri, study_storage

log = logging.getLogger(__name__)


def dashboard_storage(config: ExperimentConfig) -> str:
    """The project's study storage, checked: a SQLite file must exist and hold a study.

    Raises:
        MedxpError: no such file, or no study in it (the message says where it looked and how to fill it).
    """
    storage = study_storage(config, absolute_tracking_uri())
    if storage.startswith("sqlite:///") and not Path(storage.removeprefix("sqlite:///")).is_file():
        raise MedxpError(f"no Optuna study storage at {storage}: expected the file a search writes; start one "
                         f"(medxp search --dataset {config.dataset.name}) or point search.storage at the database")
    try:
        names = [summary.study_name for summary in optuna.get_all_study_summaries(storage)]
    except Exception as error:  # a database that does not answer, or a file that is not a study database
        raise MedxpError(f"cannot read the Optuna studies at {redacted_url(storage)}: {error}") from error
    if not names:
        raise MedxpError(f"{redacted_url(storage)} holds no study yet; start a search first")
    log.info("studies in %s: %s", redacted_url(storage), ", ".join(names))
    return storage


def serve_dashboard(storage: str, host: str = "127.0.0.1", port: int = 8080) -> None:
    """Serves optuna-dashboard on `storage` until interrupted."""
    from optuna_dashboard import run_server

    print(f"optuna-dashboard on {redacted_url(storage)}: http://{host}:{port}/ (Ctrl-C stops it)", flush=True)
    run_server(storage, host=host, port=port)
