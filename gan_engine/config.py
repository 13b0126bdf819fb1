"""TrainConfig: every option of a training run, validated, and stored in config.json and every checkpoint."""
import dataclasses
import math
from dataclasses import dataclass

from .backends.numpy_ref import PRIORS
from .data import DATASETS
from .errors import GanEngineError, check_choice
from .layers import BN_RUNNING, INITS
from .losses import GENERATOR_LOSSES
from .models import MODELS, PACK_NORMS
from .optim import OPTIMIZERS
from .real_batches import REAL_PACKS
from .trainer import UPDATES

# Options added after runs were first saved, with the value that gives those runs' behaviour: a saved config
# without one gets it (any other missing option is refused).
ADDED = {"pac": 1, "ema": 0.0, "update": "alternating", "bn_eps": 1e-5, "bn_running": "var", "pack_norm": "batch",
         "real_packs": "drawn"}

# What `gan-engine train --dataset NAME` trains where TrainConfig's own defaults (made for images) fail: on the 2-D
# mixtures, the PacGAN protocol's maxout GAN (presets.py) made narrower (G 3 x 128, D 3 maxout layers of 64 units;
# the protocol's 4 x 400 and 3 x 200) with Adam's beta1 0.5 (the protocol's 0.8), sampled from the moving average of
# G's weights (decay 0.999), with the sample-quality metrics twenty times a run. ring8: unpacked, lr 1e-4, 40,000
# steps. grid25: packing 2 and lr 2e-4, 60,000 steps (unpacked, the samples pile onto some of its 25 modes). The
# budgets are where the averaged generator's high-quality share stopped rising.
# The protocol's own sizes spread the samples unevenly (reverse KL 0.2-0.3 on ring8 at 20,000 steps) at six times
# the cost of a step. README "What the defaults reach" has the runs that chose these and their check on seeds they
# were not chosen on. The options given win over these, and a preset replaces them (every preset sets each option
# named here).
_MIXTURE_DEFAULTS = {"model": "maxout", "z_dim": 2, "g_hidden": (128, 128, 128), "d_hidden": (64, 64, 64),
                     "init": "normal", "lr_g": 1e-4, "lr_d": 1e-4, "beta1": 0.5, "batch_size": 100, "pac": 1,
                     "ema": 0.999, "steps": 40_000, "metrics_every": 2000}
DATASET_DEFAULTS = {"ring8": _MIXTURE_DEFAULTS,
                    "grid25": {**_MIXTURE_DEFAULTS, "pac": 2, "lr_g": 2e-4, "lr_d": 2e-4, "steps": 60_000,
                               "metrics_every": 3000}}

# Options that may change when a run is resumed: where it runs, where its data lies now and how often it reports,
# not what it computes.
RESUMABLE = ("steps", "backend", "data", "log_every", "sample_every", "checkpoint_every", "metrics_every")


@dataclass
class TrainConfig:
    """Options of a run. The defaults train the MLP GAN on the embedded digits in under a minute on 2 cores; ring8
    and grid25 have their own (DATASET_DEFAULTS), which `TrainConfig.with_defaults` applies and `TrainConfig` not.

    Options left at None take the model's default: hidden sizes (512 for mlp, by image size for dcgan, 4 x 400 and
    3 x 200 for maxout) and the initialiser (xavier for mlp, N(0, 0.02) for dcgan and maxout).
    """
    dataset: str = "digits"
    data: str | None = None
    model: str = "mlp"
    backend: str = "auto"
    dtype: str = "float32"
    steps: int = 10000
    batch_size: int = 64
    seed: int = 0
    k_disc: int = 1
    loss: str = "non-saturating"
    prior: str = "normal"
    z_dim: int = 64
    g_hidden: tuple | None = None  # None: 512 for mlp; by image size for dcgan (models.dcgan_channels)
    d_hidden: tuple | None = None
    alpha: float = 0.2
    init: str | None = None        # None: xavier for mlp, normal (N(0, 0.02)) for dcgan and maxout
    image_size: int | None = None  # folder dataset: side of the square images [64]
    channels: int | None = None    # folder dataset: 1 (grayscale) or 3 (RGB) [auto]
    optimizer: str = "adam"
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    momentum: float = 0.9
    label_smoothing: float = 0.0
    pac: int = 1                   # PacGAN packing: samples D judges at once
    ema: float = 0.0               # decay of the moving average of G's weights that samples come from; 0: none
    update: str = "alternating"    # the step's rule: alternating (k D steps, then G) or simultaneous (trainer.py)
    bn_eps: float = 1e-5           # batch norm: added to the variance
    bn_running: str = "var"        # batch norm: what the running statistics average, var or stdev (layers.BatchNorm)
    pack_norm: str = "batch"       # with pac > 1, G's batch norm over the whole batch or per pack slot (models.py)
    real_packs: str = "drawn"      # real batches: points drawn every step, or packs made once (real_batches.py)
    log_every: int = 50
    sample_every: int = 1000
    checkpoint_every: int = 2000
    metrics_every: int | None = None  # steps between sample-quality metrics (and best.npz updates); None: never

    def __post_init__(self):
        self._check_types()
        for name in ("g_hidden", "d_hidden"):
            if getattr(self, name) is not None:
                setattr(self, name, tuple(getattr(self, name)))
        if self.init is None:
            self.init = "xavier" if self.model == "mlp" else "normal"
        self.validate()

    def _check_types(self):
        """Raise GanEngineError naming the first option whose value has the wrong type (a hand-edited config.json
        can hold anything) or is NaN or infinite."""
        for field in dataclasses.fields(self):
            value, kind = getattr(self, field.name), field.type
            optional = "None" in str(kind)
            if value is None and optional:
                continue
            name = field.name.replace("_", "-")
            if "tuple" in str(kind):
                ok = isinstance(value, (list, tuple)) and all(_is_int(h) for h in value)
                what = "a list of integers"
            elif "int" in str(kind):
                ok, what = _is_int(value), "an integer"
            elif "float" in str(kind):
                ok = (_is_int(value) or isinstance(value, float)) and math.isfinite(value)
                what = "a finite number"
            else:
                ok, what = isinstance(value, str), "a string"
            if not ok:
                raise GanEngineError(f"{name} must be {what}{' or null' if optional else ''}, got {value!r}")

    def validate(self):
        """Raise GanEngineError naming the first bad option."""
        choices = {"dataset": DATASETS, "model": MODELS, "dtype": ("float32", "float64"), "loss": GENERATOR_LOSSES,
                   "prior": PRIORS, "init": INITS, "optimizer": OPTIMIZERS, "update": UPDATES,
                   "bn_running": BN_RUNNING, "pack_norm": PACK_NORMS, "real_packs": REAL_PACKS}
        for name, allowed in choices.items():
            check_choice(name.replace("_", "-"), getattr(self, name), allowed)
        for name in ("steps", "batch_size", "k_disc", "z_dim", "pac", "log_every", "sample_every", "checkpoint_every",
                     "metrics_every"):
            value = getattr(self, name)
            if value is None and name == "metrics_every":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise GanEngineError(f"{name.replace('_', '-')} must be a positive integer, got {value!r}")
        for name in ("g_hidden", "d_hidden"):
            sizes = getattr(self, name)
            if sizes is not None and not (sizes and all(isinstance(h, int) and h >= 1 for h in sizes)):
                raise GanEngineError(f"{name.replace('_', '-')} must be positive integers, got {sizes}")
        if self.dataset != "folder" and (self.image_size is not None or self.channels is not None):
            raise GanEngineError("--image-size and --channels apply to --dataset folder only")
        if self.image_size is not None and (isinstance(self.image_size, bool) or not isinstance(self.image_size, int)
                                            or self.image_size < 4):
            raise GanEngineError(f"image-size must be an integer >= 4, got {self.image_size!r}")
        if self.channels not in (None, 1, 3):
            raise GanEngineError(f"channels must be 1 (grayscale) or 3 (RGB), got {self.channels!r}")
        for name in ("lr_g", "lr_d"):
            if not getattr(self, name) > 0:
                raise GanEngineError(f"{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.update == "simultaneous" and self.k_disc != 1:
            raise GanEngineError(f"--update simultaneous makes one D and one G update a step: k-disc must be 1, got "
                                 f"{self.k_disc}")
        if not 0 < self.bn_eps < 1:
            raise GanEngineError(f"bn-eps must be in (0, 1), got {self.bn_eps}")
        for name in ("alpha", "beta1", "beta2", "momentum", "label_smoothing", "ema"):
            if not 0 <= getattr(self, name) < 1:
                raise GanEngineError(f"{name.replace('_', '-')} must be in [0, 1), got {getattr(self, name)}")

    @classmethod
    def with_defaults(cls, **options):
        """The config of `options` (name -> value) over their dataset's defaults (DATASET_DEFAULTS), then
        TrainConfig's own: what `gan-engine train` and `gan-engine study` start a run with."""
        return cls(**{**DATASET_DEFAULTS.get(options.get("dataset", cls.dataset), {}), **options})

    def to_dict(self):
        d = dataclasses.asdict(self)
        for name in ("g_hidden", "d_hidden"):
            d[name] = list(d[name]) if d[name] is not None else None
        return d

    @classmethod
    def from_dict(cls, d):
        """A TrainConfig from a saved dict (config.json, a checkpoint): every option must be there, known and of
        its type; a missing one is refused rather than silently given today's default."""
        if not isinstance(d, dict):
            raise GanEngineError(f"a config must be a JSON object, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise GanEngineError(f"unknown config options: {', '.join(unknown)}")
        d = {**{k: v for k, v in ADDED.items() if k not in d}, **d}
        missing = sorted(known - set(d))
        if missing:
            raise GanEngineError(f"the config lacks {', '.join(missing)} (a saved config records every option)")
        return cls(**d)


def record(asked, resolved):
    """config.json's contents: every option as the run resolved it (the backend it runs on, the models' hidden
    sizes, the folder images' size and channels) and, under "asked", the values given where they differ
    ("auto", or null for a default)."""
    d, given = resolved.to_dict(), asked.to_dict()
    return {**d, "asked": {k: v for k, v in given.items() if v != d[k]}}


def from_record(d):
    """The TrainConfig a run was asked for, from its config.json (record's form, or a plain saved config)."""
    if not isinstance(d, dict):
        raise GanEngineError(f"a config must be a JSON object, got {type(d).__name__}")
    asked = d.get("asked", {})
    if not isinstance(asked, dict):
        raise GanEngineError(f"its \"asked\" options must be a JSON object, got {type(asked).__name__}")
    return TrainConfig.from_dict({**{k: v for k, v in d.items() if k != "asked"}, **asked})


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)
