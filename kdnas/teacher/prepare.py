"""The teacher and the data of a study, loaded and checked against each other (``prepare``),
and the teacher's accuracy on them, kept across runs (``teacher_accuracy``)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging

from kdnas.core.errors import KdnasError
from kdnas.core.files import write_text
from kdnas.core.settings import SearchConfig
from kdnas.data import cache_dir, load_data, parse_normalize
from kdnas.distill import evaluate
from kdnas.teacher.check import attach_to_data
from kdnas.teacher.load import load_teacher

log = logging.getLogger(__name__)


def prepare(cfg: SearchConfig) -> tuple[SearchConfig, object, object, list[str]]:
    """Load the teacher and the data for a study, and check them against each other.

    The data is fed with the teacher's normalisation (its checkpoint's, ``cfg.normalize``,
    or else the data's own statistics), and ``cfg`` gains the data spec recorded in a kdnas
    checkpoint and the validation fraction the teacher was trained without. Returns the
    completed config, teacher, data and notices for the user.
    """
    if cfg.teacher is None:
        raise KdnasError("--teacher is needed: the path of a teacher checkpoint (make one "
                         "with `kdnas teacher train`, or try `kdnas demo`)")
    notes: list[str] = []
    teacher = load_teacher(cfg.teacher, arch=cfg.teacher_arch, num_classes=cfg.num_classes,
                           trust_pickle=cfg.trust_pickle, layers=list(cfg.teacher_layers))
    if cfg.data is None:
        if not teacher.data:
            raise KdnasError("--data is needed: this teacher file records no data set (e.g. "
                             "--data cifar10:/data/cifar10)")
        cfg = dataclasses.replace(cfg, data=teacher.data)
        notes.append(f"data: {cfg.data} (recorded in the teacher checkpoint)")
    if cfg.val_fraction is None:  # carve the split the teacher was trained without
        split = teacher.meta.get("split") or {}
        cfg = dataclasses.replace(cfg, val_fraction=split.get("val_fraction") or 0.1)
    data = load_data(cfg.data, val_fraction=cfg.val_fraction, seed=cfg.split_seed)
    if cfg.normalize:
        data = data.with_normalization(*parse_normalize(cfg.normalize, data.in_channels))
    elif teacher.mean is not None:
        data = data.with_normalization(teacher.mean, teacher.std)
    else:
        notes.append("normalising inputs with the data's own mean and std; if the teacher was "
                     "trained otherwise, say so with --normalize (e.g. imagenet)")
    notes += attach_to_data(teacher, data)
    return cfg, teacher, data, notes


def teacher_accuracy(teacher, data, split: str = "val", device=None
                     ) -> tuple[float, bool]:
    """The teacher's accuracy on a split, and whether it came from the cache: results are
    kept in ``$KDNAS_CACHE/teacher_accuracy.json`` by the teacher file's digest, its class,
    the data's digest and normalisation, so a resumed or repeated search does not evaluate
    the same teacher on the same images again."""
    key = hashlib.sha1(json.dumps([teacher.digest, type(teacher.module).__qualname__,
                                   teacher.channels_last, data.digest(), list(data.mean),
                                   list(data.std), split]).encode()).hexdigest()[:16]
    path = cache_dir() / "teacher_accuracy.json"
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    if key in known:
        return float(known[key]), True
    acc = evaluate(teacher.module, data, split, channels_last=teacher.channels_last,
                   device=device)
    try:
        write_text(path, json.dumps({**known, key: acc}, indent=1))
    except OSError as e:  # a read-only cache costs an evaluation next time, nothing more
        log.info("could not keep the teacher's accuracy in %s: %s", path, e)
    return acc, False
