"""What a study keeps in Optuna, spelled once: the names of the study's and its trials' user
attributes, and a trial's outcome as the records and reports name it. Every part that reads
or writes a study uses these names (:mod:`kdnas.search.loop`, ``storage``, ``sampler``,
``rungs``, ``noise``, ``references``). Torch-free."""

from __future__ import annotations

from enum import StrEnum


class StudyAttr:
    """The study's user attributes."""

    CONFIG = "config"  # the SearchConfig, as a dict
    LEAD_HOST = "lead_host"  # the machine that made it (promotions, references, noise)
    FINGERPRINT = "fingerprint"  # teacher and data digests, checked on resume
    NORMALIZATION = "normalization"
    TEACHER_VAL_ACCURACY = "teacher_val_accuracy"
    NUM_CLASSES = "num_classes"
    VAL_IMAGES = "val_images"  # each accuracy's sampling error
    HYPERVOLUME_REFERENCE = "hypervolume_reference"  # fixed when the study is made
    KD_AUTO_METHODS = "kd_auto_methods"  # --kd auto's choices, kept from the first trial
    NOISE = "noise"  # the knee trained again with another seed
    REFERENCES = "references"  # --references, trained with the brief recipe
    RUNGS = "rungs"  # --rungs: trial -> rung -> result
    DISTILLED = "distilled"  # kdnas distill's results, by name
    EXPORTED = "exported"  # kdnas export's results, by output folder


class TrialAttr:
    """A trial's user attributes."""

    SPEC = "spec"
    SPEC_ID = "spec_id"
    COST = "cost"
    REFUSED = "refused"  # why the gate refused it
    TRAINING = "training"  # claimed by a worker, not yet told
    TRAINED = "trained"
    WORKER = "worker"
    TIME = "time"  # seconds by phase
    ESTIMATE = "estimate_seconds"  # the training time the user was told before it trained
    ERROR = "error"
    INTERRUPTED = "interrupted"
    DUPLICATE_OF = "duplicate_of"
    SURPLUS = "surplus"  # why it was not trained (the study had its count)
    RETRY_OF = "retry_of"
    # a candidate that did not train (kdnas.front.collapsed), after its retry with the
    # stabler recipe: the reason; failed, never on the front or told to the sampler
    TRAINING_FAILED = "training_failed"
    RETRIED = "retried"  # the first training's failure, when the stabler recipe's held
    REFERENCE = "reference"  # a hand-designed preset trained as the study's starting line
    RETRY_REASON = "retry_reason"
    VAL_ACCURACY = "val_accuracy"
    TRAIN_SECONDS = "train_seconds"
    KD = "kd"
    FEATURE_WEIGHT = "feature_weight"
    WEIGHTS = "weights"
    CURVE = "curve"
    LEARNING_CURVE = "learning_curve"
    RECIPE = "recipe"
    SIGNALS = "signals"  # name -> {"value", "seconds"}: training-free and learning-curve


# the signals a trained trial records (``TrialAttr.SIGNALS``; trials.csv's ``signal_*``):
# kdnas.distill.signals' score_all and curve_signals, in that order
SIGNAL_NAMES = ("naswot", "grad_norm", "synflow", "teacher_similarity", "curve_extrapolated",
                "curve_slope")


class Outcome(StrEnum):
    """What became of a trial (``TrialRecord.state``; Optuna's own state name otherwise,
    such as ``running``). A StrEnum: equal to its name in tables and JSON."""

    TRAINED = "trained"
    INFEASIBLE = "infeasible"  # over budget, or refused before training
    DUPLICATE = "duplicate"  # a candidate the study had trained: its result reused
    SURPLUS = "surplus"  # proposed after the study had its count
    FAILED = "failed"
    INTERRUPTED = "interrupted"
    TRAINING_FAILED = "did not train"  # trained once (and again, stabler): near chance
    REFERENCE = "reference"  # a hand-designed preset told to the study (its starting line)
