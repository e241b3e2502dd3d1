"""Named experiments that re-run the claims of classic batch-norm tutorials.

Each experiment module has ``run(out_dir, ctx, quick, log) -> metrics`` which
writes ``metrics.json`` and PNG figures under ``out_dir`` and returns the
metrics, including a ``claims`` list of ``{claim, verdict, reason}`` that the
report (``report.py``) turns into docs/results.md.  Training goes through the
same library functions as the trainer (models, optim, functional); the
experiments add only their settings and their measurements.
"""
from . import lenet_bn, mlp_grid, mlp_sigmoid, optimizers, weight_init

EXPERIMENTS = {
    "lenet-bn": lenet_bn,
    "mlp-grid": mlp_grid,
    "mlp-sigmoid": mlp_sigmoid,
    "optimizers": optimizers,
    "init": weight_init,
}

# The remaining studies of the results report, not implemented yet; the
# report lists them so that a reader sees what is still missing.
PLANNED = ("batch-size", "lr-sensitivity")

__all__ = ["EXPERIMENTS", "PLANNED"]
