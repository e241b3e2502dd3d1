"""Named experiments that re-run the claims of classic batch-norm tutorials.

Each experiment module has ``run(out_dir, ctx, quick, log, seeds) -> metrics`` which
writes ``metrics.json`` and PNG figures under ``out_dir`` and returns the
metrics, including a ``claims`` list of ``{claim, verdict, reason, dataset,
tutorial}`` (judged over the seeds by the rules of ``spread.py``) that the
report (``report.py``) turns into docs/results.md.  Training goes through the
same library functions as the trainer (models, optim, functional); the
experiments add only their settings and their measurements.
"""
from types import SimpleNamespace

from . import bn_paper, lenet_bn, mlp_grid, mlp_sigmoid, optimizers, regression, weight_init

# in the order `all` runs them and the report shows them: the paper, then the tutorials
EXPERIMENTS = {
    "bn-paper": bn_paper,
    "lenet-bn": lenet_bn,
    "mlp-grid": mlp_grid,
    "mlp-sigmoid": mlp_sigmoid,
    "batch-size": SimpleNamespace(run=regression.run_batch_size),
    "lr-sensitivity": SimpleNamespace(run=regression.run_lr_sensitivity),
    "optimizers": optimizers,
    "init": weight_init,
}

# Studies of the results report not implemented yet (the report lists them).
PLANNED = ()

__all__ = ["EXPERIMENTS", "PLANNED"]
