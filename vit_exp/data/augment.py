"""Training-image augmentation (the ``augment`` config group): its checked settings and the MindSpore
dataset ops they make. Every random draw is MindSpore's, from the dataset seed ``TrainBatches`` sets
per epoch, so a resumed epoch gets the same images (docs/recipe.md: Augmentation)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from statistics import NormalDist

from vit_exp.errors import ConfigError, check_field_types

MAGNITUDE_MAX = 10  # timm's magnitude scale (rand-m9: 9 of 10)
MAGNITUDE_BINS = 101  # MindSpore's RandAugment indexes magnitudes: 0..100 is timm's 0..10 in steps of 0.1
MAGNITUDE_DRAWS = 20  # N(magnitude, magnitude_std) as 20 equally likely magnitudes (its quantiles)
SWITCH_STEPS = 20  # switch_prob as a choice among 20 equally likely batch ops


@dataclass
class RandAugmentSettings:
    """``augment.randaug``: ``num_ops`` ops per image (0 = off), each applied with ``prob``."""

    num_ops: int = 0
    magnitude: float = 9
    magnitude_std: float = 0.5
    prob: float = 0.5

    def check(self) -> None:
        if self.num_ops < 0:
            raise ConfigError(f"augment.randaug.num_ops must be >= 0 (0 = off), got {self.num_ops}")
        if not 0 <= self.magnitude <= MAGNITUDE_MAX:
            raise ConfigError(f"augment.randaug.magnitude must be in [0, 10], got {self.magnitude}")
        if self.magnitude_std < 0:
            raise ConfigError(f"augment.randaug.magnitude_std must be >= 0, got {self.magnitude_std}")
        _probability("augment.randaug.prob", self.prob)

    def magnitudes(self) -> list[int]:
        """MindSpore magnitude indices, equally likely: N(magnitude, magnitude_std)'s quantiles, clipped."""
        if self.magnitude_std == 0:
            return [_magnitude_index(self.magnitude)]
        normal = NormalDist(self.magnitude, self.magnitude_std)
        return [_magnitude_index(normal.inv_cdf((i + 0.5) / MAGNITUDE_DRAWS)) for i in range(MAGNITUDE_DRAWS)]


@dataclass
class RandomErasingSettings:
    """``augment.random_erasing``: erase one box of random normal pixels with ``prob`` (0 = off)."""

    prob: float = 0.0
    scale: tuple[float, float] = (0.02, 0.33)
    ratio: tuple[float, float] = (0.3, 3.3)

    def check(self) -> None:
        _probability("augment.random_erasing.prob", self.prob)
        low, high = self.scale
        if not 0 < low <= high <= 1:
            raise ConfigError(f"augment.random_erasing.scale must be 0 < low <= high <= 1, got {self.scale}")
        low, high = self.ratio
        if not 0 < low <= high:
            raise ConfigError(f"augment.random_erasing.ratio must be 0 < low <= high, got {self.ratio}")


@dataclass
class MixSettings:
    """``augment.mix``: mixup or CutMix of a batch with ``prob`` (0 = off); CutMix takes ``switch_prob``
    of the mixed batches when both alphas are > 0."""

    prob: float = 0.0
    mixup_alpha: float = 0.8
    cutmix_alpha: float = 1.0
    switch_prob: float = 0.5

    def check(self) -> None:
        _probability("augment.mix.prob", self.prob)
        _probability("augment.mix.switch_prob", self.switch_prob)
        for key in ("mixup_alpha", "cutmix_alpha"):
            if getattr(self, key) < 0:
                raise ConfigError(f"augment.mix.{key} must be >= 0 (0 = not used), got {getattr(self, key)}")
        if self.prob > 0 and self.mixup_alpha == 0 and self.cutmix_alpha == 0:
            raise ConfigError("augment.mix.prob > 0 needs augment.mix.mixup_alpha or cutmix_alpha > 0")

    def cutmix_share(self) -> int:
        """Of ``SWITCH_STEPS`` equally likely batch ops, how many are CutMix."""
        if self.cutmix_alpha == 0:
            return 0
        return SWITCH_STEPS if self.mixup_alpha == 0 else round(self.switch_prob * SWITCH_STEPS)


@dataclass
class AugmentSettings:
    """The ``augment`` config group, checked when built; defaults in conf/augment/basic.yaml."""

    name: str = "basic"
    random_crop: bool = True
    hflip: bool = True
    randaug: RandAugmentSettings = field(default_factory=RandAugmentSettings)
    random_erasing: RandomErasingSettings = field(default_factory=RandomErasingSettings)
    mix: MixSettings = field(default_factory=MixSettings)

    def __post_init__(self) -> None:
        self.randaug = _part(RandAugmentSettings, self.randaug, "augment.randaug")
        self.random_erasing = _part(RandomErasingSettings, self.random_erasing, "augment.random_erasing")
        self.mix = _part(MixSettings, self.mix, "augment.mix")
        check_field_types(self, "augment")

    @property
    def mixes(self) -> bool:
        """Whether training targets are soft (mixup/CutMix on)."""
        return self.mix.prob > 0


def _part(kind: type, value, key: str):
    """A sub-group (``augment.mix``, ...) from its config mapping, checked."""
    if isinstance(value, kind):
        part = value
    elif isinstance(value, Mapping):
        names = {f.name for f in fields(kind)}
        if unknown := sorted(set(value) - names):
            raise ConfigError(f"{key}.{unknown[0]} is not a setting; {key} has {sorted(names)}")
        part = kind(**{k: tuple(v) if k in ("scale", "ratio") and _listy(v) else v for k, v in value.items()})
    else:
        raise ConfigError(f"{key} must be a mapping of settings, got {value!r}")
    check_field_types(part, key)
    part.check()
    return part


def _listy(value) -> bool:
    return not isinstance(value, (str, bytes, Mapping)) and hasattr(value, "__len__")


def _probability(key: str, value: float) -> None:
    if not 0 <= value <= 1:
        raise ConfigError(f"{key} must be a probability in [0, 1], got {value}")


def _magnitude_index(magnitude: float) -> int:
    scale = (MAGNITUDE_BINS - 1) / MAGNITUDE_MAX
    return min(max(round(magnitude * scale), 0), MAGNITUDE_BINS - 1)


@dataclass(frozen=True)
class Augmentation:
    """What the training pipeline applies: ``settings``, and for soft targets the head's class count
    and the label smoothing applied to the one-hot targets before they are mixed."""

    settings: AugmentSettings = field(default_factory=AugmentSettings)
    num_classes: int = 0
    label_smoothing: float = 0.0

    def randaug_ops(self, mean) -> list:
        """``num_ops`` stages on the uint8 HWC image: each, with ``prob``, one RandAugment op at a
        magnitude drawn from N(magnitude, magnitude_std) (filled with the data's mean colour)."""
        from mindspore.dataset import transforms, vision
        from mindspore.dataset.vision import Inter

        randaug = self.settings.randaug
        fill = tuple(round(m) for m in mean)

        def stage():
            ops = [
                vision.RandAugment(1, m, MAGNITUDE_BINS, Inter.BILINEAR, fill) for m in randaug.magnitudes()
            ]
            op = ops[0] if len(ops) == 1 else transforms.RandomChoice(ops)
            return op if randaug.prob == 1 else transforms.RandomApply([op], prob=float(randaug.prob))

        return [stage() for _ in range(randaug.num_ops)]

    def erasing_op(self):
        """MindSpore's RandomErasing (CHW, normalized image) or None when off."""
        from mindspore.dataset import vision

        erasing = self.settings.random_erasing
        if erasing.prob == 0:
            return None
        scale, ratio = tuple(map(float, erasing.scale)), tuple(map(float, erasing.ratio))
        return vision.RandomErasing(float(erasing.prob), scale, ratio, value="random")

    def label_ops(self) -> list:
        """Sparse labels -> smoothed one-hot float targets, for mixing (none when mixing is off)."""
        from mindspore.dataset import transforms

        if not self.settings.mixes:
            return []
        if self.num_classes < 2:
            raise ConfigError("augment.mix needs a head of at least 2 classes (model.num_classes)")
        return [
            transforms.OneHot(self.num_classes, float(self.label_smoothing)),
            transforms.TypeCast(_float32()),
        ]

    def batch_op(self):
        """The batch op mixing ``(image [B, C, H, W], label [B, classes])``, or None when off."""
        from mindspore.dataset import transforms, vision
        from mindspore.dataset.vision import ImageBatchFormat

        mix = self.settings.mix
        if mix.prob == 0:
            return None
        cutmix = mix.cutmix_share()
        ops = []
        if cutmix:
            ops += [vision.CutMixBatch(ImageBatchFormat.NCHW, float(mix.cutmix_alpha), 1.0)] * cutmix
        if cutmix < SWITCH_STEPS:
            ops += [vision.MixUpBatch(float(mix.mixup_alpha))] * (SWITCH_STEPS - cutmix)
        op = ops[0] if cutmix in (0, SWITCH_STEPS) else transforms.RandomChoice(ops)
        return op if mix.prob == 1 else transforms.RandomApply([op], prob=float(mix.prob))


def _float32():
    import mindspore as ms

    return ms.float32
