"""``seg3d export``: a model folder as a portable bundle (networks + everything predict needs)."""
from seg3d.export.bundle import export_bundle

__all__ = ["export_bundle"]
