"""Settings as frozen dataclasses, validated on construction: the study (:class:`SearchConfig`,
from flags or a TOML file) and the training recipe (:class:`TrainConfig`). Torch-free."""

from __future__ import annotations

import dataclasses
import math
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from kdnas.core.budget import Budget, parse_budget
from kdnas.core.errors import KdnasError


# --kd: feature losses add to logit KD; "feature" is FitNets, the default
KD_METHODS = ("feature", "fitnets", "at", "sp", "pkt", "logit", "none")
FEATURE_METHODS = ("fitnets", "at", "sp", "pkt")
# default weight of each feature loss, scaled so that it starts near the size of the KD term
FEATURE_WEIGHTS = {"fitnets": 1.0, "at": 5.0, "sp": 3000.0, "pkt": 30000.0}


def canonical_method(kd: str) -> str:
    return "fitnets" if kd == "feature" else kd


# the brief recipe when neither --steps nor --epochs is given: a fixed number of optimizer
# steps (images seen), so a small data set gets many epochs and a large one a part of one
DEFAULT_STEPS = 400
MAX_DEFAULT_EPOCHS = 30  # a tiny data set stops here instead
CURVE_POINTS = 5  # validation points of each candidate's learning curve
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")


def check_device(text: str, flag: str = "--device") -> None:
    """A device name kdnas can resolve (whether it exists is checked where it is used)."""
    if not DEVICE_PATTERN.fullmatch(text):
        raise KdnasError(f"{flag} {text!r}: use auto (a GPU when one is visible), cpu, cuda "
                         "or cuda:N")


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
    kd: str = "feature"
    temperature: float = 4.0
    kd_alpha: float = 0.9
    feature_weight: float | None = None  # None: the method's default (FEATURE_WEIGHTS)
    schedule: str = "cosine"  # or "step": x0.1 at 50% and 75% of the steps
    seed: int = 0
    channels_last: bool = True
    # learning curve: accuracy on the first ``eval_limit`` validation images every
    # ``eval_every`` steps (None: only at the end)
    eval_every: int | None = None
    eval_limit: int = 1000
    device: str = "auto"  # auto, cpu, cuda, cuda:N (kdnas.device)

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
        if self.schedule not in ("cosine", "step"):
            raise KdnasError(f"schedule must be cosine or step, got {self.schedule!r}")
        if self.feature_weight is not None and self.feature_weight < 0:
            raise KdnasError(f"feature weight must be >= 0, got {self.feature_weight}")

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


# cost objectives: name on the command line -> Cost field / report column
OBJECTIVE_COLUMNS = {"macs": "macs", "params": "params", "latency": "latency_ms",
                     "train_time": "train_step_ms"}


@dataclass(frozen=True)
class SearchConfig:
    """Everything that defines a study. Stored with the study, so workers and reports agree."""

    study: str = "kdnas"
    teacher: str | None = None
    data: str | None = None
    budget: str = "50MFLOPs"
    space: str = "resnet"
    trials: int = 20
    seed: int = 0
    # brief training used to rank candidates: steps, or epochs, or (neither) the default of
    # DEFAULT_STEPS steps, at most MAX_DEFAULT_EPOCHS epochs
    steps: int | None = None
    epochs: float | None = None
    train_fraction: float = 1.0
    batch_size: int = 128
    lr: float = 0.1
    kd: str = "feature"
    temperature: float = 4.0
    kd_alpha: float = 0.9
    feature_weight: float | None = None  # None: the method's default
    teacher_cache: bool = True  # compute the teacher's outputs once per study
    cache_limit_gb: float = 8.0  # a cache that would be larger is not written (teacher runs)
    noise_check: bool = True  # train the front's knee again with another seed at the end
    teacher_layers: tuple[str, ...] = ()
    # hand-designed students trained with the same brief recipe, for the report: preset names
    # of the study's space or space:preset (e.g. resnet20, mobilenet:mobilenetv2_half)
    references: tuple[str, ...] = ()
    teacher_arch: str | None = None  # for a state_dict: torchvision name or module:Class
    num_classes: int | None = None  # size of that architecture's head
    trust_pickle: bool = False  # allow unpickling a whole module (runs code from the file)
    normalize: str | None = None  # a foreign teacher's input normalisation
    # data split: val is carved from train with this fixed seed, whatever --seed is
    val_fraction: float | None = None  # None: the teacher's (kdnas checkpoint), else 0.1
    split_seed: int = 0
    # cost: what the front trades accuracy against (the first is the report's x axis)
    objectives: tuple[str, ...] = ("macs",)
    latency: bool = True
    latency_threads: int = 1
    latency_batch: int = 1
    latency_device: str = "cpu"  # where latency is measured: the deployment target's kind
    device: str = "auto"  # where candidates train: a GPU when one is visible
    # where things go
    workdir: str = "runs"
    reports: str = "reports"
    storage: str | None = None
    max_proposals: int = 0  # 0: 20 x trials

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
        if self.latency_threads < 1 or self.latency_batch < 1:
            raise KdnasError("latency threads and batch must be at least 1")
        bad = [o for o in self.objectives if o not in OBJECTIVE_COLUMNS]
        if not self.objectives or bad:
            raise KdnasError(f"objectives {list(self.objectives)}: choose one or more of "
                             f"{', '.join(OBJECTIVE_COLUMNS)} (accuracy is always maximised)")
        if "latency" in self.objectives and not self.latency:
            raise KdnasError("a latency objective needs latency measured: drop --no-latency")
        if self.steps is not None and self.epochs is not None:
            raise KdnasError("give --steps or --epochs for the brief training, not both")
        self.budget_obj()  # validates the budget text
        self.train_config(1000)  # validates the training recipe

    def budget_obj(self) -> Budget:
        return parse_budget(self.budget)

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

    def train_config(self, n_train: int) -> TrainConfig:
        """The brief recipe for a training split of ``n_train`` images, in steps, with a
        learning curve of CURVE_POINTS points, each on at most 1,000 validation images and
        at most a quarter of the images trained between two points (so that a short trial
        does not spend a third of its time on its curve); with ``kd = "auto"`` the study
        picks the method per trial."""
        steps = self.brief_steps(n_train)
        every = max(1, steps // CURVE_POINTS)
        return TrainConfig(steps=steps, batch_size=self.batch_size, lr=self.lr,
                           train_fraction=self.train_fraction,
                           kd="logit" if self.kd == "auto" else self.kd,
                           temperature=self.temperature, kd_alpha=self.kd_alpha,
                           feature_weight=self.feature_weight, seed=self.seed,
                           eval_every=every, eval_limit=max(100, min(
                               1000, every * self.batch_size // 4)), device=self.device)

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
        d = dataclasses.asdict(self)
        d["teacher_layers"] = list(self.teacher_layers)
        d["objectives"] = list(self.objectives)
        d["references"] = list(self.references)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> SearchConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise KdnasError(f"unknown study setting(s) {unknown}; known: {sorted(names)}")
        d = dict(d)
        if "teacher_layers" in d and d["teacher_layers"] is not None:
            layers = d["teacher_layers"]
            d["teacher_layers"] = tuple(layers.split(",") if isinstance(layers, str) else layers)
        if isinstance(d.get("references"), str):
            d["references"] = d["references"].split(",")
        if d.get("references") is not None:
            d["references"] = tuple(r.strip() for r in d["references"] if r.strip())
        if isinstance(d.get("objectives"), str):
            d["objectives"] = d["objectives"].split(",")
        if d.get("objectives") is not None:
            names = [o.strip() for o in d["objectives"] if o.strip() not in ("acc", "accuracy")]
            d["objectives"] = tuple(n for n in names if n)
        return cls(**d)


def load_config(path: str | Path | None, overrides: dict) -> SearchConfig:
    """Defaults, then the TOML file (if any), then explicit flags (``None`` means unset)."""
    values: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise KdnasError(f"study config {str(p)!r} does not exist (see studies/ for examples)")
        try:
            values.update(tomllib.loads(p.read_text()))
        except tomllib.TOMLDecodeError as e:
            raise KdnasError(f"cannot parse {p}: {e}") from None
        values = {k.replace("-", "_"): v for k, v in values.items()}
    values.update({k: v for k, v in overrides.items() if v is not None})
    return SearchConfig.from_dict(values)
