"""Distillation: losses (logits in :mod:`.logit_losses`, features in :mod:`.losses`, the
closed-form hint in :mod:`.hint`), forward hooks (:mod:`.hooks`), the per-study teacher cache
(:mod:`.cache`) and the brief trainer (:mod:`.trainer`). Nothing here depends on a particular
search space."""

from kdnas.distill.cache import TeacherCache
from kdnas.distill.hooks import FeatureTaps
from kdnas.distill.logit_losses import DISTLoss, DKDLoss, KDLoss, logit_loss, standardise
from kdnas.distill.losses import (
    ATLoss,
    HintLoss,
    PKTLoss,
    RKDLoss,
    SPLoss,
    feature_loss,
    match_taps,
)
from kdnas.distill.evaluation import evaluate
from kdnas.distill.trainer import FitResult, fit

__all__ = ["ATLoss", "DISTLoss", "DKDLoss", "FeatureTaps", "FitResult", "HintLoss", "KDLoss",
           "PKTLoss", "RKDLoss", "SPLoss", "TeacherCache", "evaluate", "feature_loss", "fit",
           "logit_loss", "match_taps", "standardise"]
