"""Act on the read: remove read-confirmed dead units and merge duplicate units."""

from dead_directions.prune.algorithm import (
    PRUNE_DETECTORS,
    LayerPrune,
    PruneReport,
    Skipped,
    UnitAction,
    layer_fractions,
    load_pruned,
    prune,
    prune_checkpoint,
    removable_record,
    save_pruned,
)

__all__ = [
    "PRUNE_DETECTORS",
    "LayerPrune",
    "PruneReport",
    "Skipped",
    "UnitAction",
    "layer_fractions",
    "load_pruned",
    "prune",
    "prune_checkpoint",
    "removable_record",
    "save_pruned",
]
