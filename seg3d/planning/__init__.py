"""Planning: target spacing, normalization, topology and patch/batch under a memory budget."""
from seg3d.planning.plan import ChannelNormalization, Configuration, Plan, Topology

__all__ = ["ChannelNormalization", "Configuration", "Plan", "Topology"]
