"""The sweep's outputs, named once: the tables (a metric each) and the figures of a family.

The list lives in ``dead_directions/data/outputs.json`` so that the workflow (which does
not import the package) declares exactly the files the package writes.
"""

from __future__ import annotations

import json
from importlib import resources

OUTPUTS = json.loads(resources.files("dead_directions").joinpath("data/outputs.json").read_text())
#: metric -> what its table counts, in table order (the first is the report's headline)
METRICS: dict[str, str] = dict(OUTPUTS["metrics"])
#: figure -> its caption: the figures of a family, in report order
CAPTIONS: dict[str, str] = {**OUTPUTS["figures"], **OUTPUTS["prune_figure"]}
FIGURES: tuple[str, ...] = tuple(OUTPUTS["figures"])
#: the removable-parameters figure (written with the prune tables)
PRUNE_FIGURE: str = next(iter(OUTPUTS["prune_figure"]))
