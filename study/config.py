"""The study's configuration: one dataclass, a YAML file, then command-line flags, resolved once.

`resolve(args)` returns the `StudyConfig` with defaults filled in (results folder,
tracking URI, storage path); `ConfigError` carries one line for the user.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from analysis.tables import MARGIN
from trainables.data import DATASETS, NEEDS_FOLDER, OPTIONAL_SETTINGS, DataConfig
from trainables.methods import HyperParameterError, available, get
from trainables.methods.interface import PROTOCOLS, SELECTION_ALIAS
from trainables.audit import ULIRA_TARGETS
from trainables.metrics import BOOTSTRAP
from trainables.records import OBJECTIVES, PRIMARIES, default_results_dir, default_tracking_uri, write_atomic

BASELINES = [m for m in available() if m != "gli"]


class ConfigError(ValueError):
    """A configuration problem, one line, raised before any expensive work."""


def where(default):
    """A setting that says where and on what a study runs, not what it computes: a rerun that changes only
    such settings resumes the same study (they are left out of its key, `study.pipeline.study_key`)."""
    return field(default=default, metadata={"placement": True})


@dataclass
class StudyConfig:
    dataset: str = "digits"
    data_dir: str | None = where(None)  # where the data lie: its content is in the key (the data fingerprint)
    forget_count: int | None = None
    train_count: int | None = None  # fashion-mnist split sizes (None: the data set's defaults)
    unseen_count: int | None = None
    test_count: int | None = None
    results_dir: str | None = where(None)  # default ./results/<experiment_name>
    experiment_name: str | None = None  # default gli-<dataset>
    num_gpus: float = where(0)
    num_cpus: int | None = where(None)  # default: every core of this machine (local cluster only)
    gpus_per_trial: float = where(0.5)  # two GLI trials per GPU: 91% of the best aggregate measured (docs/benchmarks.md)
    cpus_per_trial: float = where(1)  # what a trial reserves; its torch threads are trial_threads
    trial_threads: int = 1  # torch threads per trial: they change float sums, so they are the study's, not the cluster's
    address: str | None = where(None)  # join this Ray cluster instead of starting one
    storage_path: str | None = where(None)  # shared storage for multi-node runs; default <results_dir>/ray
    tracking_uri: str | None = where(None)  # default sqlite:///<results_dir>/mlflow.db
    tracking_outage: float = where(300.0)  # seconds the store may be unreachable (writes queued, retried) before stopping
    budget: int = 24  # Optuna trials per searched method: GLI's, and every baseline's unless paper_baselines
    gli_trials: int | None = where(None)  # deprecated: the old name of budget
    replicates: int = 3  # reported replicates 1..N, each its own split seed and training seed (0 tunes)
    seeds: int | None = None  # deprecated: the old name of replicates
    until_settled: bool = False  # add rounds of replicates until every GLI-minus-baseline comparison is settled
    max_replicates: int = 20  # ... or this many replicates are reported
    margin: float = MARGIN  # a comparison whose interval lies within +-margin is settled as equivalent
    round_size: int | None = None  # replicates between looks when `looks` is not given (default: 4 equal looks)
    looks: list[int] | None = None  # --until-settled: reported replicates at each look (default: four, equally
    # spaced up to max_replicates: 5, 10, 15, 20); fixed when the study first starts, never from the cluster
    primary: str = "final_score"  # the one metric tested (GLI minus each baseline); the others are estimates
    candidates: int | None = None  # each method's best settings from its search rerun on the selection replicates (3)
    selection_replicates: int | None = None  # replicates (own split seeds, never reported) choosing each setting (2)
    protocol: str = PROTOCOLS[0]  # fair: one honest selection rule; paper: the reference notebooks step for step
    selection: str | None = None  # deprecated: val is protocol fair, test is protocol paper
    objective: str = OBJECTIVES[0]
    paper_baselines: bool | None = None  # baselines at their paper settings, not searched (default: under paper only)
    tune_baselines: bool | None = None  # deprecated: the opposite of paper_baselines
    baselines: list[str] = field(default_factory=lambda: list(BASELINES))
    smoke_test: bool = False
    allow_cpu: bool = where(False)
    sampler_seed: int = 0
    search_batch: int = 4  # settings asked for at once per search, so that a seeded search repeats (0: as slots free)
    eval_every: int | None = None  # steps between evaluations inside a trial (default: ~10 per epoch, at most ~20 per run)
    patience: int | None = None  # evaluations without improvement before a trial stops early
    base_epochs: int | None = None  # override the base models' training epochs
    image_size: int | None = None  # decode face images at this size (default 128); small CPU runs
    width: int | None = None  # the width-reduced ResNet-18 at this width instead of ResNet-18
    attribute: str | None = None  # mucac-binary: the attribute predicted (default Young)
    deterministic: bool = False  # GPU trials in fp32 with deterministic kernels, no CUDA graphs (slower; exact repeats)
    method_epochs: int | None = None  # override every method's epochs (the smoke test uses 1)
    bundle_seconds: float = where(1.0)  # trials shorter than half this run several to a Tune trial (study/plan.py)
    max_failures: int = where(2)  # retries of a trial whose worker died (a diverging trial is never retried)
    audit: int = where(0)  # models per setting in the privacy audit after confirm (0: no audit; trainables/audit.py)
    audit_ceiling: str = where("retrained")  # F's ceiling: from K more retrained models, or simulated (no training)
    attack: str | None = where(None)  # "ulira": U-LiRA's per-example attack after confirm (None: none)
    shadows: int = where(16)  # U-LiRA's shadow models per audited setting (even: complementary pairs)
    targets: int = where(ULIRA_TARGETS)  # U-LiRA's held-out target models per audited setting (even)
    bootstrap: int = BOOTSTRAP  # resamples behind fs_se at the chosen checkpoint, the forgetting score's standard error (0: none)
    gli_space: dict[str, list[float]] = field(default_factory=lambda: get("gli").Params.bounds())  # as declared
    spaces: dict[str, dict] = field(default_factory=dict)  # per baseline, search bounds replacing declared ones
    cache_dir: str | None = where(None)  # decoded-image cache (default ~/.cache/gli-study)
    method_hparams: dict[str, dict] = field(default_factory=dict)  # per-method overrides of the paper's settings

    def validate(self) -> None:
        if self.dataset not in DATASETS:
            raise ConfigError(f"unknown data set {self.dataset!r}; known: {', '.join(DATASETS)}")
        if self.dataset in NEEDS_FOLDER and not self.data_dir:
            raise ConfigError(f"data set {self.dataset!r} needs --data-dir")
        if self.protocol not in PROTOCOLS:
            raise ConfigError(f"--protocol must be one of {', '.join(PROTOCOLS)}, got {self.protocol!r}")
        for name, value, low in (("--image-size", self.image_size, 1), ("--width", self.width, 1),
                                 ("--base-epochs", self.base_epochs, 1), ("--eval-every", self.eval_every, 1),
                                 ("--patience", self.patience, 1), ("method_epochs", self.method_epochs, 1),
                                 ("--forget-count", self.forget_count, 1), ("--train-count", self.train_count, 1),
                                 ("--unseen-count", self.unseen_count, 1), ("--test-count", self.test_count, 1),
                                 ("--num-cpus", self.num_cpus, 1), ("--sampler-seed", self.sampler_seed, 0),
                                 ("--search-batch", self.search_batch, 0), ("--trial-threads", self.trial_threads, 1)):
            if value is not None and not _whole(value, low):
                raise ConfigError(f"{name} must be a whole number >= {low}, got {value!r}")
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"--objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        unknown = sorted(set(self.baselines) - set(BASELINES))
        if unknown:
            raise ConfigError(f"unknown baseline method(s) {', '.join(unknown)}; known: {', '.join(BASELINES)}")
        if not _whole(self.bootstrap, 0) or self.bootstrap == 1:
            raise ConfigError(f"--bootstrap must be 0 (none) or a whole number >= 2, got {self.bootstrap!r}")
        if not _whole(self.audit, 0) or self.audit == 1:
            raise ConfigError(f"--audit needs at least 2 models per setting (the challenge used 512), got {self.audit}")
        if self.audit_ceiling not in ("retrained", "simulated"):
            raise ConfigError(f"--audit-ceiling must be retrained or simulated, got {self.audit_ceiling!r}")
        if self.attack not in (None, "ulira"):
            raise ConfigError(f"--attack must be ulira, got {self.attack!r}")
        for name, value in (("--shadows", self.shadows), ("--targets", self.targets)):
            if not _whole(value, 2) or value % 2:
                raise ConfigError(f"{name} must be an even whole number >= 2 (models come in complementary pairs), "
                                  f"got {value!r}")
        if self.until_settled and _whole(self.max_replicates, 1) and _whole(self.replicates, 1) \
                and self.max_replicates < self.replicates:
            raise ConfigError(f"--max-replicates ({self.max_replicates}) must be at least --replicates ({self.replicates})")
        if self.primary not in PRIMARIES:
            raise ConfigError(f"--primary must be one of {', '.join(PRIMARIES)}, got {self.primary!r}")
        for name, value in (("--candidates", self.candidates), ("--selection-replicates", self.selection_replicates)):
            if not _whole(value, 1):
                raise ConfigError(f"{name} must be a whole number >= 1, got {value!r}")
        if not (_number(self.margin) and 0 < self.margin < 1):
            raise ConfigError(f"--margin must be a number in (0, 1), got {self.margin!r}")
        if self.round_size is not None and not _whole(self.round_size, 1):
            raise ConfigError(f"--round-size must be a whole number >= 1, got {self.round_size!r}")
        if self.looks is not None:
            looks = self.looks
            if (not isinstance(looks, list) or not looks or not all(_whole(n, 1) for n in looks)
                    or looks != sorted(set(looks))):
                raise ConfigError(f"--looks must be increasing whole numbers of replicates >= 1, got {looks!r}")
            if self.until_settled and _whole(self.max_replicates, 1) and looks[-1] > self.max_replicates:
                raise ConfigError(f"--looks ends at {looks[-1]} replicates, past --max-replicates {self.max_replicates}")
        for name, value, low in [("--budget", self.budget, 1), ("--replicates", self.replicates, 1),
                                 ("--max-replicates", self.max_replicates, 1),
                                 ("--max-failures", self.max_failures, 0)]:
            if not _whole(value, low):
                raise ConfigError(f"{name} must be a whole number >= {low}, got {value!r}")
        for name, value in (("--num-gpus", self.num_gpus), ("--gpus-per-trial", self.gpus_per_trial),
                            ("--cpus-per-trial", self.cpus_per_trial), ("--bundle-seconds", self.bundle_seconds),
                            ("--tracking-outage", self.tracking_outage)):
            if not _number(value):
                raise ConfigError(f"{name} must be a number, got {value!r}")
        for name, value in (("--dataset", self.dataset), ("--protocol", self.protocol),
                            ("--objective", self.objective)):
            if not isinstance(value, str):
                raise ConfigError(f"{name} must be a name, got {value!r}")
        if not self.bundle_seconds >= 0:
            raise ConfigError(f"--bundle-seconds must be >= 0 (0: one trial per Tune trial), got {self.bundle_seconds}")
        if not self.tracking_outage > 0:
            raise ConfigError(f"--tracking-outage must be a positive number of seconds, got {self.tracking_outage}")
        if self.num_gpus < 0 or self.cpus_per_trial <= 0 or (self.num_cpus is not None and self.num_cpus < 1):
            raise ConfigError("--num-gpus must be >= 0, --num-cpus >= 1 and --cpus-per-trial > 0")
        if self.num_gpus > 0 and not 0 < self.gpus_per_trial <= max(1.0, self.num_gpus):
            raise ConfigError(f"--gpus-per-trial must be in (0, {max(1.0, self.num_gpus)}], got {self.gpus_per_trial}")
        self._validate_space()
        self._validate_method_hparams()

    def _validate_method_hparams(self) -> None:
        from trainables.methods import resolve

        for method, hparams in self.method_hparams.items():
            if method not in available():
                raise ConfigError(f"method_hparams: unknown method {method!r}; known: {', '.join(available())}")
            if not isinstance(hparams, dict):
                raise ConfigError(f"method_hparams.{method} must be a mapping of hyper-parameters")
            try:
                resolve(method, self.dataset, **hparams)
            except HyperParameterError as exc:
                raise ConfigError(f"method_hparams.{method}: {exc}") from None

    def _validate_space(self) -> None:
        try:
            get("gli").Params.check_bounds(self.gli_space)
        except HyperParameterError as exc:
            raise ConfigError(f"gli_space: {exc}") from None
        if not isinstance(self.spaces, dict):
            raise ConfigError(f"spaces must map a baseline to its bounds, got {self.spaces!r}")
        for method, bounds in self.spaces.items():
            if method not in BASELINES:
                raise ConfigError(f"spaces.{method}: not a baseline (known: {', '.join(BASELINES)}; GLI's is gli_space)")
            declared = get(method).Params.bounds()
            if not isinstance(bounds, dict) or set(bounds) - set(declared):
                raise ConfigError(f"spaces.{method}: bounds of {sorted(declared)} only, got {bounds!r}")
            try:
                get(method).Params.check_bounds({**declared, **bounds})
            except HyperParameterError as exc:
                raise ConfigError(f"spaces.{method}: {exc}") from None

    # --- derived ----------------------------------------------------------------------------
    @property
    def results_path(self) -> Path:
        return Path(self.results_dir).expanduser().resolve()

    @property
    def models_dir(self) -> str:
        """Base-model checkpoints: under the shared storage path, so every node of a cluster reads them."""
        if "://" in self.storage_path:  # an object-store URI: checkpoints stay with the results on the driver's disk
            return str(self.results_path / "models")
        return str(Path(self.storage_path) / "models")

    def fill_defaults(self) -> "StudyConfig":
        if self.selection is not None:  # the deprecated alias
            if self.selection not in SELECTION_ALIAS:
                raise ConfigError(f"--selection must be val or test, got {self.selection!r}")
            alias = SELECTION_ALIAS[self.selection]
            if self.protocol not in ("fair", alias):
                raise ConfigError(f"--selection {self.selection} contradicts --protocol {self.protocol}")
            print(f"[study] --selection is deprecated: use --protocol {alias}", file=sys.stderr)
            self.protocol, self.selection = alias, None
        if self.seeds is not None:  # the deprecated name
            print(f"[study] --seeds is deprecated: use --replicates {self.seeds} (each replicate draws its own split "
                  "and trains with its own seed)", file=sys.stderr)
            self.replicates, self.seeds = self.seeds, None
        if self.gli_trials is not None:  # the deprecated name
            print(f"[study] gli_trials is deprecated: use budget (--budget {self.gli_trials})", file=sys.stderr)
            self.budget, self.gli_trials = self.gli_trials, None
        if self.tune_baselines is not None:  # the deprecated flag
            print("[study] tune_baselines is deprecated: baselines are searched under --protocol fair unless "
                  "--paper-baselines", file=sys.stderr)
            if self.paper_baselines is None:
                self.paper_baselines = not self.tune_baselines
            self.tune_baselines = None
        if self.paper_baselines is None:  # fair: every method searched with the same budget; paper: the notebooks'
            self.paper_baselines = self.protocol == "paper"
        if self.smoke_test:  # the whole path, small: every method, one seed, short trials; what the user set stays
            self.budget = min(self.budget, 4) if _number(self.budget) else self.budget
            self.replicates = 1
            self.base_epochs = 3 if self.base_epochs is None else self.base_epochs
            self.method_epochs = 1 if self.method_epochs is None else self.method_epochs
            self.eval_every = 7 if self.eval_every is None else self.eval_every
            self.candidates = 2 if self.candidates is None else self.candidates
            self.selection_replicates = 1 if self.selection_replicates is None else self.selection_replicates
        self.candidates = 3 if self.candidates is None else self.candidates
        self.selection_replicates = 2 if self.selection_replicates is None else self.selection_replicates
        for name in ("candidates", "selection_replicates"):  # 3.0 from YAML counts as 3
            value = getattr(self, name)
            if isinstance(value, float) and value.is_integer():
                setattr(self, name, int(value))
        if not self.experiment_name:  # a paper-protocol study is its own experiment, in its own folder
            suffix = ("-paper" if self.protocol == "paper" else "") + ("-smoke" if self.smoke_test else "")
            self.experiment_name = f"gli-{self.dataset}{suffix}"
        self.results_dir = str(Path(self.results_dir or default_results_dir(self.experiment_name)).expanduser().resolve())
        self.storage_path = self.storage_path or str(self.results_path / "ray")
        if "://" not in self.storage_path:
            self.storage_path = str(Path(self.storage_path).expanduser().resolve())
        self.tracking_uri = self.tracking_uri or default_tracking_uri(self.results_path)
        if self.num_gpus == 0:
            self.gpus_per_trial = 0
        if self.until_settled and self.looks is None and _whole(self.replicates, 1) and _whole(self.max_replicates, 1):
            from analysis.sequential import default_looks, look_sizes  # the schedule: the study's own settings, never its slots

            most = max(self.replicates, self.max_replicates)
            self.looks = (look_sizes(self.replicates, most, self.round_size) if self.round_size
                          else default_looks(most))
        return self


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _whole(value, low: int) -> bool:
    """A whole number (an int, or a float such as YAML's 3.0) of at least `low`."""
    return _number(value) and value == int(value) and value >= low


FIELDS = {f.name: f for f in dataclasses.fields(StudyConfig)}
PLACEMENT = {name for name, f in FIELDS.items() if f.metadata.get("placement")}


def data_config(cfg: StudyConfig) -> DataConfig:
    """The data settings of a study (unset ones keep `DataConfig`'s defaults), as of its tuning replicate."""
    given = {k: getattr(cfg, k) for k in OPTIONAL_SETTINGS if getattr(cfg, k) is not None}
    return DataConfig(dataset=cfg.dataset, data_dir=cfg.data_dir, cache_dir=cfg.cache_dir, **given)


def load_yaml(path: str) -> dict[str, Any]:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file ({exc.strerror})") from None
    try:
        values = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where} ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of settings, got {type(values).__name__}")
    values = {str(k).replace("-", "_"): v for k, v in values.items()}
    for recorded in ("data_fingerprint", "study_key"):  # recorded in a resolved config.yaml, not settings
        values.pop(recorded, None)
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        raise ConfigError(f"{path}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(FIELDS))}")
    return values


def resolve(file_values: dict[str, Any], flag_values: dict[str, Any]) -> StudyConfig:
    """Defaults, then the YAML file, then the flags that were given."""
    merged = {**file_values, **{k: v for k, v in flag_values.items() if v is not None}}
    try:
        cfg = StudyConfig(**merged)
    except TypeError as exc:
        raise ConfigError(str(exc)) from None
    cfg.fill_defaults()
    cfg.validate()
    return cfg


def write_resolved(cfg: StudyConfig, path: Path, extra: dict | None = None) -> None:
    write_atomic(path, yaml.safe_dump({**asdict(cfg), **(extra or {})}, sort_keys=True))
