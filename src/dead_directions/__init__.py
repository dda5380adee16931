"""dead-directions: read singular structure at frozen checkpoints of neural networks."""

from . import cells
from .direction import Direction
from .likelihood import Likelihood, get_likelihood
from .rate import RateOptions
from .read import Read, ReadOptions, read, read_many

__version__ = "0.1.0"

__all__ = [
    "Direction",
    "Likelihood",
    "RateOptions",
    "Read",
    "ReadOptions",
    "cells",
    "get_likelihood",
    "read",
    "read_many",
]
