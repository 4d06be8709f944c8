"""Cohorts: explanations of many cases as Ray tasks (:mod:`.run`, :mod:`.case`), their aggregation across the
cohort (:mod:`.aggregation`) and its picture (:mod:`.figure`). Ray and pandas are the optional extra
``segshap[cohort]``."""

from .aggregation import COHORT_COLUMNS, CohortResult, MissingDependency, aggregate
from .run import COHORT_FEATURES, CohortStopped, explain_cohort

__all__ = [
    "explain_cohort",
    "aggregate",
    "CohortResult",
    "CohortStopped",
    "COHORT_COLUMNS",
    "COHORT_FEATURES",
    "MissingDependency",
]
