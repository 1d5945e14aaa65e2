"""Planning: target spacing, normalization, topology and patch/batch under a memory budget."""
from seg3d.core.plan import ChannelNormalization, Configuration, Plan, Topology
from seg3d.planning.planner import plan_dataset, plan_from_fingerprint
from seg3d.planning.presets import PRESET_NAMES, Preset, load_preset

__all__ = ["ChannelNormalization", "Configuration", "Plan", "Topology", "plan_dataset", "plan_from_fingerprint",
           "Preset", "PRESET_NAMES", "load_preset"]
