"""The one result type of a study: what every study returns, writes as ``metrics.json`` and the report reads."""
import dataclasses
import json
import os
from typing import Any, Dict, List

from ..atomic import atomic_write_json

__all__ = ["StudyResult", "Claim", "verdict", "describe", "METRICS_FILE", "VERDICTS"]

METRICS_FILE = "metrics.json"
VERDICTS = ("reproduced", "partly", "not reproduced")

# A claim's row: {claim, verdict, reason, dataset, tutorial} (plain dicts, as they are stored)
Claim = Dict[str, Any]


def describe(module_doc):
    """A study's description: its module docstring without the first line (the title)."""
    return module_doc.split("\n", 1)[1].strip()


def verdict(claim, holds, reason, partly=False, dataset=None, tutorial=None):
    """A claim's row: ``holds`` and ``partly`` come from the rules of spread.py; ``reason`` is our
    measurement, ``tutorial`` the figure the tutorial itself reported (and on which data)."""
    return dict(claim=claim, verdict=VERDICTS[0] if holds else (VERDICTS[1] if partly else VERDICTS[2]),
                reason=reason, dataset=dataset, tutorial=tutorial)


@dataclasses.dataclass
class StudyResult:
    """One study's run: the fields the report reads, and the study's own ``measurements``.

    ``metrics.json`` is ``to_json()``: these fields (plus ``dataset``, the names joined) with the
    measurements beside them at the top level, so the file reads as before.
    """
    experiment: str
    title: str
    claims: List[Claim]
    datasets: List[str]
    seeds: List[int] = dataclasses.field(default_factory=lambda: [0])
    quick: bool = False
    description: str = ""
    data_source: Any = None
    figures: List[str] = dataclasses.field(default_factory=list)
    measurements: Dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def dataset(self):
        return ", ".join(self.datasets)

    def to_json(self):
        head = dict(description=self.description, experiment=self.experiment, title=self.title,
                    dataset=self.dataset, datasets=list(self.datasets), data_source=self.data_source,
                    quick=self.quick, seeds=list(self.seeds))
        clash = set(head) & set(self.measurements) | {"claims", "figures"} & set(self.measurements)
        if clash:
            raise ValueError(f"{self.experiment}: measurements may not be named {sorted(clash)}")
        return dict(head, **self.measurements, claims=self.claims, figures=list(self.figures))

    def save(self, out_dir):
        """Write ``out_dir/metrics.json`` (atomically) and return self."""
        os.makedirs(out_dir, exist_ok=True)
        atomic_write_json(os.path.join(out_dir, METRICS_FILE), self.to_json())
        return self

    @classmethod
    def from_json(cls, data, experiment=None):
        """The result stored in a metrics.json dict; ``experiment`` names it when the file does not."""
        fields = {f.name for f in dataclasses.fields(cls)} - {"measurements"}
        known = {k: v for k, v in data.items() if k in fields}
        known.setdefault("experiment", experiment)
        if "datasets" not in known:
            known["datasets"] = [data["dataset"]] if data.get("dataset") else []
        missing = [k for k in ("title", "claims") if k not in known]
        if missing:
            raise ValueError(f"{experiment or 'metrics.json'}: no {', '.join(missing)} in the stored result")
        extra = {k: v for k, v in data.items() if k not in fields and k != "dataset"}
        return cls(**known, measurements=extra)

    @classmethod
    def load(cls, out_dir, experiment=None):
        with open(os.path.join(out_dir, METRICS_FILE)) as f:
            return cls.from_json(json.load(f), experiment)
