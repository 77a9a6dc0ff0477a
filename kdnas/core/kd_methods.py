"""The distillation methods of ``--kd``, declared once (:data:`KD_TABLE`): names, default
weights and the papers' settings. Their loss modules are in :mod:`kdnas.distill.logit_losses`
and :mod:`kdnas.distill.losses`. Torch-free."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class KDMethod:
    """A distillation method of ``--kd``, declared once: its name and, for a feature method
    (added to Hinton KD on the logits), the default weight of its loss, scaled so that it
    starts near the size of the KD term. Its loss module is ``FEATURE_LOSSES[name]`` in
    :mod:`kdnas.distill.losses`."""

    name: str
    feature_weight: float | None = None  # None: logits only
    # the logit loss (kdnas.distill.logit_losses): "kd" (Hinton), "dkd" or "dist"
    logits: str = "kd"
    standardised: bool = False  # logit standardisation (LS) before the logit loss
    logit_weight: float = 1.0  # times the logit loss (with kd_alpha, as Hinton KD's)
    temperature: float | None = None  # None: the recipe's
    ramp: float = 0.0  # share of the steps over which the logit loss ramps in (DKD: 20/240)
    # a final student's (`kdnas distill`) cross-entropy weight: None, Hinton's mixing
    # (0.1 x CE + 0.9 x the logit loss, as the search trains every method); 1.0, the
    # method's paper's form (CE + the logit loss at its weights), where measured better
    final_ce_weight: float | None = None
    # the feature loss's module (kdnas.distill.losses.FEATURE_LOSSES): None, the method's own
    # name; "fitnets" adds FitNets' hints to another method's logit loss
    hints: str | None = None
    auto: bool = True  # drawn by ``--kd auto``


# in the order ``--kd auto`` searches them (a study made before the last five keeps searching
# its first five: kdnas.search.trial._auto_methods)
KD_TABLE = (KDMethod("logit"), KDMethod("fitnets", 1.0), KDMethod("at", 5.0),
            KDMethod("sp", 3000.0), KDMethod("pkt", 30000.0),
            # Zhao et al. 2022: alpha 1, beta 8 (in DKDLoss), T 4, ramped over 20 of 240 epochs
            KDMethod("dkd", logits="dkd", ramp=20 / 240, final_ce_weight=1.0),
            # Huang et al. 2022, CIFAR: T 4, beta = gamma = 2
            KDMethod("dist", logits="dist", logit_weight=2.0, final_ce_weight=1.0),
            # Sun et al. 2024, KD+LS on CIFAR-100: base temperature 2, KD weight 9 against
            # cross-entropy 0.1 (kd_alpha 0.9 x 10); DKD+LS takes the same temperature
            KDMethod("logit-ls", standardised=True, logit_weight=10.0, temperature=2.0),
            KDMethod("dkd-ls", logits="dkd", standardised=True, temperature=2.0,
                     ramp=20 / 240),
            # Park et al. 2019: distance 25, angle 50 (RKDLoss weighs them 1 : 2)
            KDMethod("rkd", 25.0),
            # DKD+LS with FitNets' hints at FitNets' weight: the ranker's logits and the
            # teacher's features together (docs/evidence/rank_fresh.md measures it)
            KDMethod("dkd-ls-hints", 1.0, logits="dkd", standardised=True, temperature=2.0,
                     ramp=20 / 240, hints="fitnets", auto=False))
KD_BY_NAME = {m.name: m for m in KD_TABLE}
AUTO_METHODS = tuple(m.name for m in KD_TABLE if m.auto)
FEATURE_METHODS = tuple(m.name for m in KD_TABLE if m.feature_weight is not None)
FEATURE_WEIGHTS = {m.name: m.feature_weight for m in KD_TABLE if m.feature_weight is not None}
# --kd: "feature" is FitNets (the search's default, SEARCH_DEFAULT below); "none" is
# cross-entropy alone
KD_METHODS = ("feature", *FEATURE_METHODS,
              *(m.name for m in KD_TABLE if m.feature_weight is None), "none")

# The two defaults, set by measurement. The search ranks candidates with FitNets (Hinton KD
# plus the teacher's features at stage boundaries): on a fresh set of 18 CIFAR-10 candidates
# of three families (4.5-5.5M MACs, docs/evidence/rank_fresh.md, figures in
# reports/rank_fresh.md), with brief seeds independent of the truth's, its brief ranking
# agreed with 8x longer training at a pooled Kendall tau of 0.69, against 0.56 for DKD on
# standardised logits (dkd-ls) and 0.44 for dkd-ls with FitNets' hints, at 1.22x dkd-ls's
# cost; the protocol's rule keeps a logit-only ranker only if it beats the feature methods
# by more than 0.1, and no learning-curve, training-free or mixed signal beat brief dkd-ls.
# dkd-ls had been the default on part B of docs/evidence/distill_methods.md (0.66 against
# FitNets' 0.54 on one seed of the development set), a lead that fell to 0.44 when the same
# runs were trained again. The final student (`kdnas distill`) trains with DIST: with the
# full recipe (3,200 steps, seeds 10-12) it had the best mean over a ShuffleNetV2 and a
# ResNet (75.75% against FitNets' 75.40%) and beat FitNets on both beyond the seeds' SD
# (+0.30 and +0.40 points; part A's rule). Part D: DIST and DKD in their papers' form
# (cross-entropy weight 1, final_ce_weight above) beat the mixing on both students; DIST so
# trained is the best measured (76.40% mean) and beat the mixed DIST on both (+0.50, +0.81).
SEARCH_DEFAULT = "fitnets"
DISTILL_DEFAULT = "dist"
# What the brief recipe's ranking across families is worth, per method (part B of that
# protocol: pooled Kendall tau of 400-step accuracies against 3,200-step FitNets training, 18
# CIFAR-10 students of three families, 3.2-4.0M MACs, one seed); the report quotes it
ACROSS_FAMILIES_TAU = {"dkd-ls": 0.66, "fitnets": 0.54, "logit": 0.42, "rkd": 0.14,
                       "dist": 0.06, "logit-ls": 0.05, "dkd": -0.01}
# the same runs trained again (docs/evidence/rank_fresh.md, development set): one run's tau
# over 18 candidates is that noisy; the report quotes both
ACROSS_FAMILIES_RERUN = {"dkd-ls": 0.44}
# the fresh set of that protocol (18 other candidates, 4.5-5.5M MACs, brief seeds
# independent of the truth's, scored once after the signals were frozen)
ACROSS_FAMILIES_FRESH = {"fitnets": 0.69, "dkd-ls": 0.56, "dkd-ls-hints": 0.44}


def canonical_method(kd: str) -> str:
    return "fitnets" if kd == "feature" else kd


def reads_features(kd: str) -> bool:
    """Whether training with ``--kd kd`` ever reads the teacher's stage features: a feature
    method, or ``auto`` (which may draw one); a logit method's teacher cache keeps logits
    only."""
    return kd == "auto" or canonical_method(kd) in FEATURE_METHODS


def kd_method(kd: str) -> KDMethod:
    """The table's entry of a ``--kd`` method ("feature" is FitNets; "none" is plain KD's
    entry, unused since no teacher term is added)."""
    return KD_BY_NAME.get(canonical_method(kd), KD_TABLE[0])
