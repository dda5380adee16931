"""dead-directions: read singular structure at frozen checkpoints of neural networks."""

from . import cells, checkpoints, zoo
from .assembly import (
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
from .detectors import detect
from .direction import Direction
from .likelihood import Likelihood, get_likelihood
from .prune import PruneReport, prune
from .rate import RateOptions
from .read import Read, ReadOptions, SpotCheck, read, read_many, read_on_device, split_probe

__version__ = "0.1.0"

__all__ = [
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
    "cells",
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
