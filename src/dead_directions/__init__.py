"""dead-directions: read singular structure at frozen checkpoints of neural networks."""

from dead_directions import zoo
from dead_directions.core.assembly import (
    Assembly,
    Locus,
    Term,
    assemble,
    dln_lambda,
    nu,
    nu_frozen,
    regular_lambda,
    rrr_lambda,
)
from dead_directions.core.direction import Direction
from dead_directions.core.likelihood import Likelihood, get_likelihood
from dead_directions.core.rate import RateOptions
from dead_directions.core.read import (
    Read,
    ReadOptions,
    SpotCheck,
    read,
    read_many,
    read_on_device,
    split_probe,
)
from dead_directions.detectors import detect
from dead_directions.io import checkpoints
from dead_directions.nn import constructed, constructed_assembly
from dead_directions.prune import PruneReport, prune
from dead_directions.version import __version__

__all__ = [
    "__version__",
    "Assembly",
    "Locus",
    "Term",
    "assemble",
    "dln_lambda",
    "nu",
    "nu_frozen",
    "regular_lambda",
    "rrr_lambda",
    "Direction",
    "Likelihood",
    "PruneReport",
    "prune",
    "RateOptions",
    "Read",
    "ReadOptions",
    "constructed",
    "constructed_assembly",
    "checkpoints",
    "zoo",
    "detect",
    "detectors",
    "get_likelihood",
    "read",
    "read_many",
    "split_probe",
    "read_on_device",
    "SpotCheck",
]
