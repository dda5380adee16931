"""The package version (one home: the package, its provenance records and sidecars)."""

__version__ = "0.1.0"
