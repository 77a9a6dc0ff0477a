"""Distillation: losses (:mod:`.losses`, the closed-form hint in :mod:`.hint`), forward hooks
(:mod:`.hooks`), the per-study teacher cache (:mod:`.cache`) and the brief trainer
(:mod:`.trainer`). Nothing here depends on a particular search space."""

from kdnas.distill.cache import TeacherCache
from kdnas.distill.hooks import FeatureTaps
from kdnas.distill.losses import ATLoss, HintLoss, KDLoss, PKTLoss, SPLoss, feature_loss, match_taps
from kdnas.distill.trainer import FitResult, evaluate, fit

__all__ = ["ATLoss", "FeatureTaps", "FitResult", "HintLoss", "KDLoss", "PKTLoss", "SPLoss",
           "TeacherCache", "evaluate", "feature_loss", "fit", "match_taps"]
