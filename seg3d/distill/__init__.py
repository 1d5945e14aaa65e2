"""Knowledge distillation (``seg3d distill``): one student network trained on a fold ensemble's soft output.

:func:`distill` runs it; :class:`DistillSettings` holds its options; :mod:`.targets` computes and stores the
teacher's probabilities; :mod:`.data` samples image, label and teacher probabilities together; :mod:`.loss`
is the soft + hard loss.
"""
from seg3d.distill.distill import DistillSettings, distill
from seg3d.distill.loss import DistillationLoss, kl_soft_loss
from seg3d.distill.targets import TargetStorage, TeacherEnsemble, compute_targets

__all__ = ["DistillSettings", "DistillationLoss", "TargetStorage", "TeacherEnsemble", "compute_targets",
           "distill", "kl_soft_loss"]
