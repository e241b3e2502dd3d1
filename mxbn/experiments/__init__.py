"""Named experiments that re-run the claims of classic batch-norm tutorials.

``EXPERIMENTS`` maps each study's name to its run function
``run(out_dir, ctx, quick, log, seeds) -> StudyResult`` (``result.py``), which
writes ``metrics.json`` and PNG figures under ``out_dir``.  The result's
``claims`` (``{claim, verdict, reason, dataset, tutorial}``, judged over the
seeds by the rules of ``spread.py``) are what the report (``report.py``) turns
into docs/results.md.  Training goes through the
same library functions as the trainer (models, optim, functional); the
experiments add only their settings and their measurements.
"""
from .result import StudyResult
from . import bn_paper, lenet_bn, mlp_grid, mlp_sigmoid, optimizers, regression, small_batch, weight_init

# in the order `all` runs them and the report shows them: the paper, then the tutorials
EXPERIMENTS = {
    "bn-paper": bn_paper.run,
    "lenet-bn": lenet_bn.run,
    "mlp-grid": mlp_grid.run,
    "mlp-sigmoid": mlp_sigmoid.run,
    "batch-size": regression.run_batch_size,
    "lr-sensitivity": regression.run_lr_sensitivity,
    "optimizers": optimizers.run,
    "init": weight_init.run,
    "small-batch": small_batch.run,
}

# Studies of the results report not implemented yet (the report lists them).
PLANNED = ()

__all__ = ["EXPERIMENTS", "PLANNED", "StudyResult"]
