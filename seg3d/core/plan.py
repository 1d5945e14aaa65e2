"""The plan: everything later stages need to know about a dataset, as plain, validated data.

A plan is written once by the planner as a readable ``plans.json`` and read by preprocessing, training and
inference; none of them read global state. A plan holds no path: where its dataset lives is recorded beside it
(:class:`seg3d.core.plan_folder.PlanFolder`), so a plan folder can be moved or shared. All spatial tuples are in array order ``(z, y, x)`` of the
*canonical* orientation (see :class:`seg3d.io.image.Reorientation`); 2D configurations list the two
in-plane axes only and slice along ``slice_axis``.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from seg3d.atomic import write_json_atomic
from seg3d.core.plan_folder import PlanFolder
from seg3d.errors import Seg3dError

SCHEMA_VERSION = 1
NORMALIZATION_SCHEMES = ("ct", "zscore", "zscore_nonzero", "none")
CONFIG_NAMES = ("3d_fullres", "3d_lowres", "2d")


@dataclass(frozen=True)
class ChannelNormalization:
    """How one input channel is normalised.

    ``ct``: clip to [clip_low, clip_high] then (x - mean) / std with dataset-wide foreground statistics.
    ``zscore``: per-image mean/std. ``zscore_nonzero``: per-image, statistics inside the nonzero region, and
    voxels outside it set to 0. ``none``: passed through.
    """

    channel: str
    scheme: str
    clip_low: float | None = None
    clip_high: float | None = None
    mean: float | None = None
    std: float | None = None


@dataclass(frozen=True)
class Topology:
    """Encoder stages of a U-Net: per stage a kernel size and the stride that *enters* the stage.

    ``strides[0]`` is all ones (the first stage keeps full resolution). Every stage has two convolutions.
    """

    kernel_sizes: tuple[tuple[int, ...], ...]
    strides: tuple[tuple[int, ...], ...]
    features: tuple[int, ...]

    @property
    def num_stages(self) -> int:
        return len(self.features)

    @property
    def total_stride(self) -> tuple[int, ...]:
        """Product of strides per axis: the patch must be divisible by it."""
        out = [1] * len(self.strides[0])
        for s in self.strides:
            out = [a * b for a, b in zip(out, s)]
        return tuple(out)


@dataclass(frozen=True)
class Configuration:
    name: str  # 3d_fullres | 3d_lowres | 2d
    spacing: tuple[float, ...]  # target spacing, array order
    patch_size: tuple[int, ...]
    batch_size: int
    topology: Topology
    median_shape: tuple[int, ...]  # median image shape at the target spacing (after cropping)
    estimated_memory_gb: float  # training at batch_size, from the meta-device measurement
    precision: str = "fp16"  # training precision the estimate assumes: fp16 | bf16 | fp32
    mirror_axes: tuple[int, ...] = (0, 1, 2)
    anisotropic_axis: int | None = None  # an axis much coarser than the others: in-plane augmentation,
    # separate nearest-neighbour resampling along it
    slice_axis: int | None = None  # 2d only: the 3D axis along which slices are taken
    batch_dice: bool = True

    @property
    def ndim(self) -> int:
        return len(self.patch_size)


@dataclass(frozen=True)
class TrainingDefaults:
    """Defaults for ``seg3d train`` on this plan, from the planner preset; the command line overrides them.

    ``None`` means nnU-Net's choice: SGD (lr 1e-2) and its full augmentation. The ``cpu`` preset says
    AdamW, lr 3e-3 and ``light`` augmentation (short runs learn faster with them).
    """

    optimizer: str | None = None  # sgd | adamw
    lr: float | None = None  # base learning rate
    augmentation: str | None = None  # default | light | none (seg3d.data.AUGMENTATION_PRESETS)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> TrainingDefaults:
        d = dict(d or {})
        unknown = sorted(set(d) - {"optimizer", "lr", "augmentation"})
        if unknown:
            raise Seg3dError(f"unknown training defaults: {', '.join(unknown)}")
        lr = d.get("lr")
        return cls(optimizer=d.get("optimizer"), lr=None if lr is None else float(lr),
                   augmentation=d.get("augmentation"))


@dataclass(frozen=True)
class Plan:
    dataset_name: str
    channel_names: tuple[str, ...]
    labels: dict[str, int]  # name -> value, background 0 first; class index i <-> label_values[i]
    normalization: tuple[ChannelNormalization, ...]
    configurations: dict[str, Configuration]
    original_median_spacing: tuple[float, ...]
    original_median_shape: tuple[int, ...]
    preset: str = "8gb"
    gpu_memory_gb: float = 8.0
    fingerprint_digest: str = ""
    notes: tuple[str, ...] = ()
    schema_version: int = SCHEMA_VERSION
    training: TrainingDefaults = field(default_factory=TrainingDefaults)

    @property
    def label_values(self) -> tuple[int, ...]:
        return tuple(sorted(self.labels.values()))

    @property
    def num_classes(self) -> int:
        """Classes the network predicts, background included."""
        return len(self.labels)

    @property
    def num_channels(self) -> int:
        return len(self.channel_names)

    def config(self, name: str) -> Configuration:
        if name not in self.configurations:
            raise Seg3dError(f"configuration '{name}' is not in this plan (it has: "
                             f"{', '.join(self.configurations)})")
        return self.configurations[name]

    def with_config(self, cfg: Configuration) -> Plan:
        configs = dict(self.configurations)
        configs[cfg.name] = cfg
        return replace(self, configurations=configs)

    # --- serialisation -------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d = {"schema_version": d.pop("schema_version"), **d}
        d["axis_order"] = "array order (z, y, x) of the canonical orientation"
        return _lists(d)

    def save(self, path: str | Path) -> None:
        self.validate()
        write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        path = Path(path)
        if path.is_dir():
            path = PlanFolder(path).plans_json
        if not path.is_file():
            raise Seg3dError("plan not found (run `seg3d plan` first)", path)
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise Seg3dError(f"invalid JSON: {e}", path) from None
        try:
            plan = cls.from_dict(raw)
            plan.validate()
        except Seg3dError as e:
            raise Seg3dError(str(e), path) from None
        except (KeyError, TypeError, ValueError) as e:
            raise Seg3dError(f"malformed plan ({type(e).__name__}: {e})", path) from None
        return plan

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Plan:
        version = d.get("schema_version")
        if version != SCHEMA_VERSION:
            raise Seg3dError(f"plan schema_version {version!r} is not supported (expected {SCHEMA_VERSION})")
        configs = {}
        for name, c in d["configurations"].items():
            topo = c["topology"]
            configs[name] = Configuration(
                name=c["name"], spacing=_ftuple(c["spacing"]), patch_size=_ituple(c["patch_size"]),
                batch_size=int(c["batch_size"]),
                topology=Topology(tuple(_ituple(k) for k in topo["kernel_sizes"]),
                                  tuple(_ituple(s) for s in topo["strides"]), _ituple(topo["features"])),
                median_shape=_ituple(c["median_shape"]), estimated_memory_gb=float(c["estimated_memory_gb"]),
                precision=c.get("precision", "fp16"), mirror_axes=_ituple(c.get("mirror_axes", ())),
                anisotropic_axis=c.get("anisotropic_axis"), slice_axis=c.get("slice_axis"),
                batch_dice=bool(c.get("batch_dice", True)))
        return cls(
            dataset_name=d["dataset_name"], channel_names=tuple(d["channel_names"]),
            labels={str(k): int(v) for k, v in d["labels"].items()},
            normalization=tuple(ChannelNormalization(**n) for n in d["normalization"]),
            configurations=configs, original_median_spacing=_ftuple(d["original_median_spacing"]),
            original_median_shape=_ituple(d["original_median_shape"]), preset=d.get("preset", ""),
            gpu_memory_gb=float(d.get("gpu_memory_gb", 0.0)), fingerprint_digest=d.get("fingerprint_digest", ""),
            notes=tuple(d.get("notes", ())), schema_version=int(version), training=_training(d))

    # --- validation ----------------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise :class:`Seg3dError` describing the first inconsistency (e.g. a hand-edited patch)."""
        if not self.channel_names:
            raise Seg3dError("plan has no input channels")
        if sorted(self.labels.values())[0] != 0 or len(set(self.labels.values())) != len(self.labels):
            raise Seg3dError("plan labels must contain background 0 and distinct values")
        if len(self.normalization) != len(self.channel_names):
            raise Seg3dError(f"plan has {len(self.normalization)} normalization entries for "
                             f"{len(self.channel_names)} channel(s)")
        for n in self.normalization:
            if n.scheme not in NORMALIZATION_SCHEMES:
                raise Seg3dError(f"channel '{n.channel}': unknown normalization '{n.scheme}'")
            if n.scheme == "ct" and None in (n.clip_low, n.clip_high, n.mean, n.std):
                raise Seg3dError(f"channel '{n.channel}': CT normalization needs clip_low, clip_high, mean, std")
            if n.scheme == "ct" and not (n.std and n.std > 0):
                raise Seg3dError(f"channel '{n.channel}': CT normalization std must be > 0")
        if "3d_fullres" not in self.configurations:
            raise Seg3dError("plan has no 3d_fullres configuration")
        for name, c in self.configurations.items():
            _validate_config(name, c)


def _validate_config(name: str, c: Configuration) -> None:
    where = f"configuration '{name}'"
    nd = 2 if name == "2d" else 3
    if c.name != name:
        raise Seg3dError(f"{where}: its name field says '{c.name}'")
    for label, tup in (("spacing", c.spacing), ("patch_size", c.patch_size), ("median_shape", c.median_shape)):
        if len(tup) != nd:
            raise Seg3dError(f"{where}: {label} must have {nd} entries, has {len(tup)}")
    if any(s <= 0 for s in c.spacing):
        raise Seg3dError(f"{where}: spacing must be positive, got {c.spacing}")
    if c.batch_size < 1:
        raise Seg3dError(f"{where}: batch_size must be >= 1, got {c.batch_size}")
    t = c.topology
    n = t.num_stages
    if n < 1 or len(t.kernel_sizes) != n or len(t.strides) != n:
        raise Seg3dError(f"{where}: topology needs as many kernel_sizes and strides as features")
    for k, s in zip(t.kernel_sizes, t.strides):
        if len(k) != nd or len(s) != nd:
            raise Seg3dError(f"{where}: every kernel size and stride must have {nd} entries")
        if any(v not in (1, 3, 5) for v in k) or any(v not in (1, 2) for v in s):
            raise Seg3dError(f"{where}: kernel sizes must be 1/3/5 and strides 1/2, got {k} / {s}")
    if any(v != 1 for v in t.strides[0]):
        raise Seg3dError(f"{where}: the first stage's stride must be all ones")
    total = t.total_stride
    bad = [f"{p} (axis {i}, needs a multiple of {d})" for i, (p, d) in enumerate(zip(c.patch_size, total))
           if p <= 0 or p % d]
    if bad:
        raise Seg3dError(f"{where}: patch_size {c.patch_size} is not divisible by the network's total stride "
                         f"{total}: " + ", ".join(bad))
    if any(p // d < 2 for p, d in zip(c.patch_size, total)) and n > 1:
        raise Seg3dError(f"{where}: patch_size {c.patch_size} leaves less than 2 voxels at the bottleneck")
    if c.precision not in ("fp16", "bf16", "fp32"):
        raise Seg3dError(f"{where}: precision must be fp16, bf16 or fp32")
    if any(a not in range(nd) for a in c.mirror_axes):
        raise Seg3dError(f"{where}: mirror_axes {c.mirror_axes} out of range for {nd}D")
    if name == "2d" and c.slice_axis not in (0, 1, 2):
        raise Seg3dError(f"{where}: 2d configurations need slice_axis 0, 1 or 2")


def _training(d: dict[str, Any]) -> TrainingDefaults:
    """The typed training defaults; plans written before they had a field kept them in ``extra["training"]``
    (and an absolute ``extra["dataset_dir"]``, which is ignored: the plan folder records it)."""
    if "training" in d:
        return TrainingDefaults.from_dict(d["training"])
    extra = d.get("extra") or {}
    return TrainingDefaults.from_dict(extra.get("training") if isinstance(extra, dict) else None)


def _ituple(v) -> tuple[int, ...]:
    return tuple(int(x) for x in v)


def _ftuple(v) -> tuple[float, ...]:
    return tuple(float(x) for x in v)


def _lists(obj):
    if isinstance(obj, dict):
        return {k: _lists(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_lists(v) for v in obj]
    return obj
