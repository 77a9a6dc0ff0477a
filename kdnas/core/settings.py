"""Settings as frozen dataclasses, validated on construction: the study (:class:`SearchConfig`,
from flags or a TOML file) and the training recipe (:class:`TrainConfig`). Torch-free."""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from pathlib import Path

from kdnas.core.budget import BUDGET_HELP, parse_budget
from kdnas.core.errors import KdnasError
from kdnas.core.kd_methods import (  # noqa: F401  (their names, also read from here)
    AUTO_METHODS, DISTILL_DEFAULT, FEATURE_METHODS, FEATURE_WEIGHTS, KD_BY_NAME, KD_METHODS,
    KD_TABLE, SEARCH_DEFAULT, KDMethod, canonical_method, kd_method, reads_features)


# the brief recipe without --steps or --epochs: a fixed number of optimizer steps
DEFAULT_STEPS = 400
MAX_DEFAULT_EPOCHS = 30  # a tiny data set stops here instead
CURVE_POINTS = 5  # validation points of each candidate's learning curve
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")


def check_device(text: str, flag: str = "--device") -> None:
    """A device name kdnas can resolve (whether it exists is checked where it is used)."""
    if not DEVICE_PATTERN.fullmatch(text):
        raise KdnasError(f"{flag} {text!r}: use auto (a GPU when one is visible), cpu, cuda "
                         "or cuda:N")


# kdnas export's and kdnas distill's defaults, named once (the parser's help reads them)
EXPORT_FORMATS = ("pt2", "onnx")  # the deploy files written by default
INT8_CALIBRATION_IMAGES, INT8_CALIBRATION_DEFAULT = 512, "minmax"  # --int8 (kdnas.ship.int8)
INT8_CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
LATENCY_RUNTIMES = ("torch", "onnxruntime", "onnxruntime-int8")
DISTILL_EPOCHS, WORKERS_PER_GPU = 200.0, 4  # full distillation's length; kdnas.device


@dataclass(frozen=True)
class TrainConfig:
    """The brief training recipe used to rank candidates (and, longer, to train teachers)."""

    epochs: float = 1.0
    steps: int | None = None  # optimizer steps; when set, ``epochs`` is not used
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup: float = 0.05
    train_fraction: float = 1.0
    kd: str = SEARCH_DEFAULT  # the search's; kdnas distill passes its own (DISTILL_DEFAULT)
    temperature: float = 4.0
    kd_alpha: float = 0.9
    # None: (1 - kd_alpha) x CE + kd_alpha x the logit loss (Hinton's mixing, every method);
    # a number w: w x CE + the logit loss at its own weights (the DKD and DIST papers' form, w 1)
    ce_weight: float | None = None
    feature_weight: float | None = None  # None: the method's default (FEATURE_WEIGHTS)
    schedule: str = "cosine"  # or "step": x0.1 at 50% and 75% of the steps
    seed: int = 0
    channels_last: bool = True
    # learning curve: accuracy on ``eval_limit`` validation images every ``eval_every`` steps
    eval_every: int | None = None
    eval_limit: int = 1000
    device: str = "auto"  # auto, cpu, cuda, cuda:N (kdnas.device)
    precision: str = "fp32"  # or bf16: autocast on CUDA (kdnas.device.precision_for)

    def __post_init__(self) -> None:
        check_device(self.device)
        if not self.epochs > 0:
            raise KdnasError(f"epochs must be positive, got {self.epochs}")
        if self.steps is not None and self.steps < 1:
            raise KdnasError(f"steps must be at least 1, got {self.steps}")
        if not 0 < self.train_fraction <= 1:
            raise KdnasError(f"train fraction must be in (0, 1], got {self.train_fraction}")
        if self.kd not in KD_METHODS:
            raise KdnasError(f"unknown distillation method {self.kd!r}: choose one of "
                             f"{', '.join(KD_METHODS)}")
        if not 0 <= self.kd_alpha <= 1:
            raise KdnasError(f"kd_alpha must be in [0, 1], got {self.kd_alpha}")
        if self.batch_size < 1 or self.lr <= 0 or self.temperature <= 0:
            raise KdnasError("batch size, learning rate and temperature must be positive")
        if self.schedule not in ("cosine", "step") or self.precision not in ("fp32", "bf16"):
            raise KdnasError(f"schedule must be cosine or step and precision fp32 or bf16, got "
                             f"{self.schedule!r} and {self.precision!r}")
        if self.feature_weight is not None and self.feature_weight < 0:
            raise KdnasError(f"feature weight must be >= 0, got {self.feature_weight}")
        if self.ce_weight is not None and self.ce_weight < 0:
            raise KdnasError(f"cross-entropy weight must be >= 0, got {self.ce_weight}")
        object.__setattr__(self, "_entry", kd_method(self.kd))  # resolved once, here

    @property
    def entry(self) -> KDMethod:
        """The method's :data:`KD_TABLE` entry, read by training (``kd`` is only its name)."""
        return self._entry

    @property
    def method(self) -> str:
        return canonical_method(self.kd)

    def total_steps(self, n_images: int) -> int:
        """Optimizer steps of a run over ``n_images`` training images."""
        if self.steps is not None:
            return self.steps
        return max(1, int(round(self.epochs * math.ceil(n_images / self.batch_size))))

    @property
    def weight(self) -> float:
        """Weight of the feature loss."""
        if self.feature_weight is not None:
            return self.feature_weight
        return FEATURE_WEIGHTS.get(self.method, 0.0)

    def stabler(self) -> TrainConfig:
        """The recipe for a candidate that did not train, once more (kdnas.search.trial):
        half the peak learning rate (reports/mobilenet_collapse.md)."""
        return dataclasses.replace(self, lr=self.lr / 2)


# cost objectives: name on the command line -> Cost field / report column
OBJECTIVE_COLUMNS = {"macs": "macs", "params": "params", "latency": "latency_ms",
                     "train_time": "train_step_ms"}

DATA_HELP = ("digits (scikit-learn's 8x8 digits, bundled), cifar10:PATH (torchvision's "
             "cifar-10-batches-py layout) or imagefolder:PATH (PATH/train/<class>/*, "
             "PATH/test/<class>/* or val/); decoded image folders are cached in $KDNAS_CACHE "
             "or ~/.cache/kdnas")


def setting(default, help: str | None = None, *, fixed: bool = False, kind: type | str = str,
            flag: str | None = None, choices: tuple[str, ...] | None = None,
            metavar: str | None = None):
    """A study setting, declared once: its default, its ``kdnas search`` flag's help (None: a
    setting of config files only), whether a resumed study must keep it (``fixed``), and how
    the flag reads its value (``kind``: str, int, float, ``"list"`` for comma-separated,
    ``"on"`` for a flag that sets True, ``"off"`` for a ``--no-...`` flag that sets False).
    The parser, :func:`load_config` and the resume check all read these declarations."""
    return dataclasses.field(default=default, metadata={
        "help": help, "fixed": fixed, "kind": kind, "flag": flag, "choices": choices,
        "metavar": metavar})


@dataclass(frozen=True)
class SearchConfig:
    """Everything that defines a study. Stored with the study, so workers and reports agree.
    ``budget_value``: the budget text parsed once, when the config is made (a
    :class:`~kdnas.core.budget.Budget`)."""

    study: str = setting("kdnas", "study name (default kdnas): folder WORKDIR/NAME holds "
                         "study.db, manifest.json and trial weights")
    teacher: str | None = setting(None, "the teacher: a kdnas checkpoint (from `kdnas teacher "
                                  "train`), a state_dict with --teacher-arch, "
                                  "torchvision:NAME:FILE, a torch.export program (.pt2), a "
                                  "TorchScript archive, or a pickled module with --trust-pickle")
    data: str | None = setting(None, DATA_HELP + "; default: the data recorded in the teacher")
    budget: str = setting("50MFLOPs", BUDGET_HELP + " (default 50MFLOPs)", fixed=True)
    space: str = setting("all", "student search space: all (default: every built-in family "
                         "as one study with one front), resnet, mobilenet, shufflenet, a "
                         "list such as resnet,mobilenet, or your own as path/to/file.py:NAME "
                         "(docs/spaces.md)", fixed=True)
    trials: int = setting(20, "candidates to train in all, counting those of earlier runs of "
                          "this study; over-budget proposals are not counted (default 20)",
                          kind=int)
    seed: int = setting(0, "sampler and training seed (default 0)", fixed=True, kind=int)
    # brief training: steps, or epochs, or DEFAULT_STEPS (at most MAX_DEFAULT_EPOCHS epochs)
    steps: int | None = setting(
        None, "brief training per candidate, in optimizer steps of --batch-size images "
        "(default 400, or 30 epochs of a small data set if that is fewer; on CIFAR-10 it "
        "ranks candidates of one space like 8x longer training at Kendall tau 0.62 with "
        "seeds of its own, and 800 steps did no better: reports/search_quality.md)",
        fixed=True, kind=int)
    epochs: float | None = setting(None, "brief training per candidate in epochs instead of "
                                   "steps", fixed=True, kind=float)
    train_fraction: float = setting(1.0, "fraction of the train split used per candidate "
                                    "(default 1.0)", fixed=True, kind=float)
    batch_size: int = setting(128, "default 128", fixed=True, kind=int)
    lr: float = setting(0.1, "peak SGD learning rate (default 0.1)", fixed=True, kind=float)
    kd: str = setting(SEARCH_DEFAULT, "distillation the candidates are ranked with: fitnets "
                      "(= feature, the default: Hinton KD plus FitNets hints through 1x1-conv "
                      "+ BN connectors; Kendall tau 0.69 against 8x training on 18 fresh "
                      "CIFAR-10 candidates, dkd-ls 0.56: reports/rank_fresh.md); dkd-ls(-hints): "
                      "decoupled KD on standardised logits (plus FitNets' hints); at, sp, pkt, "
                      "rkd add their loss to Hinton KD; logit, dkd, dist, logit-ls: logit methods; "
                      "none: cross-entropy alone; auto searches the method and its weight. "
                      "kdnas distill trains the final student with its own --kd",
                      fixed=True,
                      choices=(*KD_METHODS, "auto"))
    rungs: tuple[int, ...] = setting(
        (), "multi-fidelity promotion: rungs as multiples of the brief steps, e.g. 1,4,8: when "
        "the study holds --trials candidates, the best of each cost band (by Pareto rank over "
        "accuracy and cost, at least one per family at the first rung) are trained on from "
        "their weights to 4x, and the best of those to 8x the brief steps; the front and the "
        "knee are read at the top rung (default: none, brief training only)", fixed=True,
        kind="ints")
    promote_eta: float = setting(3.0, "share of each cost band promoted to the next rung: "
                                 "1/ETA (default 3)", fixed=True, kind=float)
    trial_timeout: str = setting(
        "auto", "a trial training longer fails with the reason and the search goes on: auto "
        "(default: 10x its measured step time x steps + 2 min; none if not measured), off, or "
        "seconds; one that hangs past it is recorded as failed and the process stops",
        metavar="S")
    temperature: float = setting(4.0, fixed=True)
    kd_alpha: float = setting(0.9, fixed=True)
    feature_weight: float | None = setting(  # None: the method's default
        None, "weight of the feature loss (default per method: fitnets 1, at 5, sp 3000, pkt "
        "30000, rkd 25)", fixed=True, kind=float)
    teacher_cache: bool = setting(True, "run the teacher in every trial instead of computing "
                                  "its outputs once per study", kind="off")
    cache_limit_gb: float | str = setting(
        "auto", "largest teacher cache to write, in GB, or auto (default: half the free disk "
        "where the study writes, when the cache is made): a study whose cache would be larger "
        "runs the teacher in every trial instead", flag="--cache-limit", metavar="GB")
    signals: bool = setting(False, "record training-free scores (NASWOT, synflow, grad-norm, "
                            "teacher similarity) and curve extrapolation in trials.csv (about "
                            "1 s a trial; they ranked no better: reports/rank_fresh.md)", kind="on")
    noise_check: bool = setting(True, "do not train the front's knee again with another seed "
                                "at the end (the report then cannot say how much of the front "
                                "is seed noise)", kind="off")
    teacher_layers: tuple[str, ...] = setting((), "comma-separated teacher module names to tap "
                                              "instead of the detected stages", fixed=True,
                                              kind="list")
    # hand-designed students trained with the same brief recipe: the search's starting line
    # (kdnas.search.references)
    references: tuple[str, ...] = setting(("auto",), "hand-designed students trained first "
        "with the same recipe, the sampler's first trials, held against the best found: auto "
        "(default: the largest preset of each family that fits, at most 3), none, or names such "
        "as resnet20,mobilenet:mobilenetv2_half (docs/spaces.md)", kind="list")
    teacher_arch: str | None = setting(None, "architecture of a state_dict teacher: a "
                                       "torchvision model name (resnet18) or your class as "
                                       "my_pkg.models:Net or file.py:Net")
    num_classes: int | None = setting(None, "classes of that architecture's head (default: "
                                      "read from the weights)", kind=int)
    trust_pickle: bool = setting(False, "allow loading a whole pickled module; unpickling runs "
                                 "code from the file, so only for files you trust", kind="on")
    normalize: str | None = setting(None, "input normalisation the teacher was trained with: "
                                    "imagenet, cifar10, none, MEAN,STD or M1,M2,M3:S1,S2,S3 "
                                    "(default: a kdnas checkpoint's own, else the data's "
                                    "statistics)", fixed=True)
    # data split: val is carved from train with this fixed seed, whatever --seed is
    val_fraction: float | None = setting(None, "share of the training data held out for "
                                         "validation (default: the teacher's, else 0.1)",
                                         fixed=True, kind=float)
    split_seed: int = setting(0, fixed=True)
    # cost: what the front trades accuracy against (the first is the report's x axis)
    objectives: tuple[str, ...] = setting(
        ("macs",), "what accuracy is traded against, comma-separated: macs (default), params, "
        "latency (measured here), train_time (a training step, timed before training: "
        "candidates that train faster for their accuracy); the first is the report's front, "
        "e.g. --objectives latency,macs or macs,train_time", fixed=True, kind="list")
    latency: bool = setting(True, "skip latency measurement", kind="off")
    latency_threads: int = setting(1, "threads for latency (default 1)", kind=int)
    latency_batch: int = setting(1, "batch size for latency (default 1)", kind=int)
    latency_device: str = setting("cpu", "where latency is measured: cpu (the default: most "
                                  "students ship to CPUs), cuda or cuda:N", fixed=True)
    latency_runtime: str = setting("torch", "latency on: torch (eager, default), onnxruntime "
                                   "or onnxruntime-int8 (the exported file, fp32 or --int8: "
                                   "an export per candidate)", fixed=True,
                                   choices=LATENCY_RUNTIMES)
    device: str = setting("auto", "where candidates train: auto (a CUDA GPU when one is "
                          "visible, else the CPU; the default), cpu, cuda or cuda:N. On CUDA "
                          "the data and teacher outputs stay on the GPU")
    workdir: str = setting("runs", "where study folders go (default runs)")
    reports: str = setting("reports", "where reports go (default reports)")
    storage: str | None = setting(None, "Optuna storage URL shared by workers, e.g. "
                                  "postgresql://user:pw@host/db (default sqlite in the study "
                                  "folder); start the same command on each machine to share "
                                  "one study")
    max_proposals: int = setting(0)  # 0: 20 x trials

    def __post_init__(self) -> None:
        if not self.study or any(c in self.study for c in "/\\:") or self.study.startswith("."):
            raise KdnasError(f"study name {self.study!r} must be a plain folder name, "
                             "e.g. cifar-50m")
        if self.trials < 1:
            raise KdnasError(f"--trials must be at least 1, got {self.trials}")
        if self.val_fraction is not None and not 0 < self.val_fraction < 1:
            raise KdnasError(f"val fraction must be between 0 and 1, got {self.val_fraction}")
        check_device(self.device)
        if self.latency_device == "auto" or not DEVICE_PATTERN.fullmatch(self.latency_device):
            raise KdnasError(f"--latency-device {self.latency_device!r}: use cpu, cuda or "
                             "cuda:N")
        if self.latency_runtime != "torch" and self.latency_device != "cpu":
            raise KdnasError(f"--latency-runtime {self.latency_runtime} runs on the CPU only")
        if self.latency_threads < 1 or self.latency_batch < 1:
            raise KdnasError("latency threads and batch must be at least 1")
        if self.rungs and (self.rungs[0] != 1 or len(self.rungs) < 2
                           or list(self.rungs) != sorted(set(self.rungs))):
            raise KdnasError(f"rungs {list(self.rungs)}: start at 1 (the brief recipe) and "
                             "grow, e.g. 1,4,8")
        if self.promote_eta <= 1:
            raise KdnasError(f"--promote-eta must be above 1, got {self.promote_eta}")
        if self.trial_timeout not in ("auto", "off"):
            try:
                ok = float(self.trial_timeout) > 0
            except ValueError:
                ok = False
            if not ok:
                raise KdnasError(f"--trial-timeout {self.trial_timeout!r}: give auto, off or a "
                                 "number of seconds above 0")
        bad = [o for o in self.objectives if o not in OBJECTIVE_COLUMNS]
        if not self.objectives or bad:
            raise KdnasError(f"objectives {list(self.objectives)}: choose one or more of "
                             f"{', '.join(OBJECTIVE_COLUMNS)} (accuracy is always maximised)")
        if "latency" in self.objectives and not self.latency:
            raise KdnasError("a latency objective needs latency measured: drop --no-latency")
        if self.steps is not None and self.epochs is not None:
            raise KdnasError("give --steps or --epochs for the brief training, not both")
        if self.cache_limit_gb != "auto":
            try:
                limit = float(self.cache_limit_gb)
            except ValueError:
                limit = -1.0
            if not limit >= 0:
                raise KdnasError(f"--cache-limit {self.cache_limit_gb!r}: give auto or a size "
                                 "in GB (0 or more)")
            object.__setattr__(self, "cache_limit_gb", limit)
        object.__setattr__(self, "budget_value", parse_budget(self.budget))  # parsed once
        self.train_config(1000)  # validates the training recipe

    def brief_steps(self, n_train: int) -> int:
        """Optimizer steps of the brief recipe for a training split of ``n_train`` images
        (of which ``train_fraction`` is used)."""
        used = max(1, int(round(n_train * self.train_fraction)))
        per_epoch = math.ceil(used / self.batch_size)
        if self.steps is not None:
            return self.steps
        if self.epochs is not None:
            return max(1, int(round(self.epochs * per_epoch)))
        return min(DEFAULT_STEPS, MAX_DEFAULT_EPOCHS * per_epoch)

    def trial_limit(self, estimate_seconds: float | None) -> float | None:
        """The seconds a trial may train (``--trial-timeout``), from the estimate of its
        training time (None when not measured): auto gives 10x that plus 2 minutes."""
        if self.trial_timeout == "off":
            return None
        if self.trial_timeout == "auto":
            return None if estimate_seconds is None else 10 * estimate_seconds + 120
        return float(self.trial_timeout)

    def train_config(self, n_train: int) -> TrainConfig:
        """The brief recipe for a training split of ``n_train`` images, in steps, with a
        learning curve of CURVE_POINTS points, each on at most 1,000 validation images and
        at most a sixteenth of the images trained between two points, at least 100 (the
        curve is drawn, not ranked on: 4.1% of the bench search's wall time at a quarter);
        with ``kd = "auto"`` the study picks the method per trial."""
        steps = self.brief_steps(n_train)
        every = max(1, steps // CURVE_POINTS)
        return TrainConfig(steps=steps, batch_size=self.batch_size, lr=self.lr,
                           train_fraction=self.train_fraction,
                           kd="logit" if self.kd == "auto" else self.kd,
                           temperature=self.temperature, kd_alpha=self.kd_alpha,
                           feature_weight=self.feature_weight, seed=self.seed,
                           eval_every=every, eval_limit=max(100, min(
                               1000, every * self.batch_size // 16)), device=self.device)

    def recipe_text(self, n_train: int) -> str:
        """The brief recipe in words, e.g. ``400 steps of 128 images (1.1 epochs of 45000)``."""
        steps = self.brief_steps(n_train)
        used = max(1, int(round(n_train * self.train_fraction)))
        return (f"{steps} steps of {self.batch_size} images ({steps * self.batch_size / used:.3g} "
                f"epochs of {used})")

    @property
    def cost_columns(self) -> list[str]:
        """Columns of the report (and Cost fields) of the cost objectives."""
        return [OBJECTIVE_COLUMNS[o] for o in self.objectives]

    @property
    def measures_latency(self) -> bool:
        """Whether each candidate's latency is measured: asked for (``--latency``), bounded
        by the budget, or an objective. The one rule; the sampler's walk measures it only
        for a latency budget (the one count its fit needs)."""
        return bool(self.latency) or self.budget_value.metric == "latency_ms" \
            or "latency_ms" in self.cost_columns

    @property
    def study_dir(self) -> Path:
        return Path(self.workdir) / self.study

    @property
    def report_dir(self) -> Path:
        return Path(self.reports) / self.study

    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{(self.study_dir / 'study.db').as_posix()}"

    @property
    def proposal_cap(self) -> int:
        return self.max_proposals or 20 * self.trials

    def to_dict(self) -> dict:
        lists = ("teacher_layers", "objectives", "rungs", "references")
        return {k: list(v) if k in lists else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> SearchConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise KdnasError(f"unknown study setting(s) {unknown}; known: {sorted(names)}")
        d = dict(d)
        for key in ("teacher_layers", "references", "rungs", "objectives"):  # lists
            if isinstance(d.get(key), str):
                d[key] = str_list(d[key])
            elif d.get(key) is not None:
                d[key] = tuple(str(x).strip() for x in d[key] if str(x).strip())
        if d.get("rungs") is not None:
            try:
                d["rungs"] = tuple(int(r) for r in d["rungs"])
            except ValueError:
                raise KdnasError(f"rungs {d['rungs']!r}: give whole multiples of the brief "
                                 "steps, e.g. 1,4,8") from None
        if d.get("objectives") is not None:
            d["objectives"] = tuple(o for o in d["objectives"] if o not in ("acc", "accuracy"))
        return cls(**d)


def str_list(text: str) -> tuple[str, ...]:
    """A comma-separated flag value as a tuple of its non-empty items."""
    return tuple(x.strip() for x in text.split(",") if x.strip())


def fixed_settings() -> tuple[str, ...]:
    """The settings a resumed study must keep."""
    return tuple(f.name for f in dataclasses.fields(SearchConfig) if f.metadata["fixed"])


def flag_settings() -> list[dataclasses.Field]:
    """The settings that ``kdnas search`` takes as flags, in declaration order."""
    return [f for f in dataclasses.fields(SearchConfig) if f.metadata["help"] is not None]


def flag_name(f: dataclasses.Field) -> str:
    dashed = f.name.replace("_", "-")
    return f.metadata["flag"] or (f"--no-{dashed}" if f.metadata["kind"] == "off"
                                  else f"--{dashed}")
