"""autocompress: find the best compressed version of a PyTorch model for a hardware budget.

>>> import autocompress                                      # doctest: +SKIP
>>> outcome = autocompress.search(model, train=(x, y), val=(xv, yv), trials=20)  # doctest: +SKIP
>>> outcome.front.to_dataframe()                             # doctest: +SKIP
"""

from __future__ import annotations

from autocompress.api import search, search_lm
from autocompress.budget import Budget
from autocompress.config import StudyConfig, load_study, study_from_dict
from autocompress.errors import (
    AutocompressError,
    ConfigError,
    Interrupted,
    SearchStopped,
    TooManyFailures,
    TrialError,
)
from autocompress.export import export_trial
from autocompress.files import check_output_folder
from autocompress.pareto import (
    ParetoFront,
    hypervolume_history,
    non_dominated,
    pareto_front,
)
from autocompress.plan import Plan
from autocompress.report.outputs import write_report
from autocompress.report.validate import validate_study
from autocompress.result import Stop, StopReason, TrialCounts, TrialResult
from autocompress.space import SearchSpace, shipped_spaces
from autocompress.study import StudyOutcome, run_study
from autocompress.tasks import Task
from autocompress.trial import run_trial

__version__ = "0.1.0"

__all__ = [
    "AutocompressError",
    "Budget",
    "ConfigError",
    "Interrupted",
    "ParetoFront",
    "Plan",
    "SearchSpace",
    "SearchStopped",
    "Stop",
    "StopReason",
    "StudyConfig",
    "StudyOutcome",
    "Task",
    "TooManyFailures",
    "TrialCounts",
    "TrialError",
    "TrialResult",
    "check_output_folder",
    "export_trial",
    "hypervolume_history",
    "load_study",
    "non_dominated",
    "pareto_front",
    "run_study",
    "run_trial",
    "search",
    "search_lm",
    "shipped_spaces",
    "study_from_dict",
    "validate_study",
    "write_report",
]
