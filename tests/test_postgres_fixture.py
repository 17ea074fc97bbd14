"""The session PostgreSQL server works as an Optuna RDBStorage backend."""

from __future__ import annotations

import optuna


def test_rdb_storage_on_postgres_keeps_trials(postgres_url: str) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name="smoke", storage=optuna.storages.RDBStorage(postgres_url)
    )
    study.optimize(lambda t: t.suggest_float("x", -1.0, 1.0) ** 2, n_trials=3)

    again = optuna.load_study(study_name="smoke", storage=optuna.storages.RDBStorage(postgres_url))
    trials = again.get_trials(deepcopy=False)
    assert len(trials) == 3
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert [t.value for t in trials] == [t.value for t in study.trials]
