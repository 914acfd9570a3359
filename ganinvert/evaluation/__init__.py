"""``ganinvert evaluate``: the papers' experiments (out-of-distribution shifts, restoration, latent
robustness) as resumable grids of independent cells, run locally or on Ray, then summarised.

Example::

    from ganinvert.evaluation import EvaluationConfig, parse_methods, run_evaluation
    config = EvaluationConfig("denoise", (Path("faces"),), tuple(parse_methods("w+,sphinx")))
    run_evaluation(config, "eval-out", workers=2)
"""

from ..tasks.geometry import affine_shift
from .plan import EvaluationConfig, MethodSpec, RunStats, parse_methods
from .runner import derive_seed, plan_evaluation, run_evaluation
from .suites import SUITES, Shift, Suite, make_suite

__all__ = ["SUITES", "EvaluationConfig", "MethodSpec", "RunStats", "Shift", "Suite", "affine_shift", "derive_seed",
           "make_suite", "parse_methods", "plan_evaluation", "run_evaluation"]
