"""The options of an explanation: :class:`ExplainOptions`, one typed object from every front end to the engine.

``segshap.explain(**options)`` builds one from its keywords, a worker request's ``options`` object is read into one
(:meth:`ExplainOptions.from_dict`), the command line's flags are made from its fields (:func:`add_option_flags`),
and a cohort hands one to every case. Each option is checked here, once, when the object is made; a bad one raises
an :class:`~segshap.inputs.ArgumentError` that every front end names as its users know it (``n_features=``,
``--n-features``, ``"n_features"``).

Images, masks and maps are inputs, not options: a feature map or a baseline given as an array travels beside the
options (:func:`split_arrays`).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from .cache import DEFAULT_CACHE_BYTES
from .estimator import DESIGNS
from .features import FEATURE_KINDS
from .foreground import FOREGROUND_CHOICES
from .inference import DEFAULT_BATCH_SIZE
from .inputs import (
    BASELINES,
    DEFAULT_MARGIN,
    ArgumentError,
    checked_choice,
    checked_integer,
    checked_number,
    is_integer,
)
from .tiling import BLEND_MODES, TILING_SCHEMES, TilingSpec
from .values import VALUE_NAMES

__all__ = [
    "ExplainOptions",
    "OPTION_NAMES",
    "AUTOCAST_DTYPES",
    "ARRAY_OPTIONS",
    "split_arrays",
    "add_option_flags",
    "options_from_flags",
]

AUTOCAST_DTYPES = ("bfloat16", "float16")
"""The reduced precisions a model may run in (``autocast_dtype``): faster, not exact."""

_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def _option(help: str, parse=None, metavar: str | None = None, choices: Sequence[str] | None = None) -> dict:
    """A field's metadata: its command-line help, how the flag's text is parsed, and its choices."""
    return {"help": help, "parse": parse, "metavar": metavar, "choices": choices}


def _auto_or_integer(text: str) -> int | str:
    try:
        return text if text == "auto" else int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'auto', got {text!r}") from None


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def _name_or_number(text: str) -> str | float:
    try:
        return float(text)
    except ValueError:
        return text


def _numbers(kind):
    def parse(text: str) -> tuple:
        try:
            values = tuple(kind(part) for part in text.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number or three separated by commas, got {text!r}") from None
        return values[0] if len(values) == 1 else values

    return parse


@dataclass(frozen=True)
class ExplainOptions:
    """Every option of an explanation, with its default.

    Attributes
    ----------
    features : str
        How the image is cut into features: ``"slic"``, ``"fcc"``, ``"grid"``, ``"organs"`` or ``"organ_aware"``
        (see :mod:`segshap.features`); built only where they can change a value.
    foreground : str
        Where features may be: ``"auto"``, the image's foreground (:func:`segshap.foreground.foreground_mask`:
        the air around the patient is no feature; whole organs are left as the label map makes them), ``"none"``,
        everywhere, or the path of a mask file (NIfTI, NRRD or ``.seg.nrrd``, placed by its geometry).
        ``segshap.explain`` also takes a bool array on the image's grid.
    n_features : int
        About how many features to build inside the support (per region for ``"organ_aware"``; ignored for
        ``"organs"``).
    value : str
        The value function: ``"soft_dice"``, ``"dice"``, ``"tp"``, ``"fp"`` or ``"mean_prob"``.
    baseline : str or float
        What a removed feature's voxels become, in the network's input space: ``"mean"`` (of each channel),
        ``"min"``, ``"zero"`` or a number.
    nsamples : int or "auto"
        Coalitions to evaluate at most. ``"auto"``: ``2 M + 2048`` (all ``2**M`` when fewer), stopping early at
        ``tolerance`` (default :data:`segshap.estimator.AUTO_TOLERANCE`).
    tolerance : float, optional
        Stop once every target's largest standard error is below this fraction of its values' spread.
    design : str
        Coalition design: ``"auto"``, ``"chains"`` or ``"leverage"`` (see :func:`segshap.kernel_shap`).
    max_forwards : int, optional
        Window forwards the explanation may run, the faithfulness curves included: the sampling stops in time to
        leave the curves their share.
    max_seconds : float, optional
        Seconds the explanation may take, from the start of :func:`segshap.explain` (set-up, sampling and curves;
        saving the outputs comes after): the sampling stops before a batch that would leave too little time.
    faithfulness : bool
        Also compute the deletion and insertion curves of the ranking (and of a random one), at most a quarter of
        the estimation's forwards (:data:`segshap.pipeline.FAITHFULNESS_SHARE`).
    seed : int
        Seed of the coalition sampler (and of the random ranking).
    device : str
        ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"``.
    batch_size : int
        Windows per forward pass.
    margin : int
        Voxels added around the target's bounding box to make the default region of interest.
    cache_bytes : int
        Budget of cached window outputs (see :class:`segshap.PatchEngine`).
    autocast_dtype : str, optional
        Run the model in ``"bfloat16"`` or ``"float16"`` (``torch.autocast``): faster, not exact. A ``torch.dtype``
        is taken too.
    tiling : str, optional
        Whose sliding window to reproduce, ``"monai"`` or ``"nnunet"``; default the model's.
    patch_size, overlap, blend, sigma_scale, folds : optional
        Sliding-window settings in place of the model's (all of them for a bare network; see
        :class:`segshap.tiling.TilingSpec`).
    """

    features: str = field(
        default="slic", metadata=_option("how the image is cut into features (default slic)", choices=FEATURE_KINDS)
    )
    foreground: str = field(
        default="auto",
        metadata=_option(
            "auto (features only where the image is not background), none, or a mask file", None, "auto|none|FILE"
        ),
    )
    n_features: int = field(default=100, metadata=_option("about how many features (default 100)", _integer))
    value: str = field(default="soft_dice", metadata=_option("value function (default soft_dice)", choices=VALUE_NAMES))
    baseline: str | float = field(
        default="mean",
        metadata=_option(f"{', '.join(BASELINES)} or a number (default mean)", _name_or_number, "BASELINE"),
    )
    nsamples: int | str = field(
        default="auto", metadata=_option("coalitions to evaluate, or 'auto' (default)", _auto_or_integer, "N")
    )
    tolerance: float | None = field(
        default=None, metadata=_option("stop once max stderr / value spread falls below this", _number)
    )
    design: str = field(default="auto", metadata=_option("coalition design (default auto)", choices=DESIGNS))
    max_forwards: int | None = field(
        default=None, metadata=_option("window forwards the whole explanation may run, curves included", _integer, "N")
    )
    max_seconds: float | None = field(
        default=None, metadata=_option("seconds the whole explanation may take, curves included", _number, "S")
    )
    faithfulness: bool = field(
        default=True, metadata=_option("skip the deletion and insertion curves computed after the values")
    )
    seed: int = field(default=0, metadata=_option("seed of the coalition sampler (default 0)", _integer))
    device: str = field(default="auto", metadata=_option("auto, cpu, cuda, cuda:N or mps (default auto)"))
    batch_size: int = field(
        default=DEFAULT_BATCH_SIZE,
        metadata=_option(f"windows per forward pass (default {DEFAULT_BATCH_SIZE})", _integer, "N"),
    )
    margin: int = field(
        default=DEFAULT_MARGIN,
        metadata=_option(f"voxels around the target's box when no ROI is given (default {DEFAULT_MARGIN})", _integer),
    )
    cache_bytes: int = field(
        default=DEFAULT_CACHE_BYTES,
        metadata=_option(f"bytes of cached window outputs (default {DEFAULT_CACHE_BYTES})", _integer, "BYTES"),
    )
    autocast_dtype: str | None = field(
        default=None, metadata=_option("run the model in this precision: faster, not exact", choices=AUTOCAST_DTYPES)
    )
    tiling: str | None = field(
        default=None,
        metadata=_option("whose sliding window to reproduce (default the model's)", choices=TILING_SCHEMES),
    )
    patch_size: int | tuple[int, ...] | None = field(
        default=None, metadata=_option("window size in place of the model's: N or X,Y,Z", _numbers(int), "SIZE")
    )
    overlap: float | tuple[float, ...] | None = field(
        default=None, metadata=_option("window overlap in place of the model's", _numbers(float))
    )
    blend: str | None = field(default=None, metadata=_option("blending in place of the model's", choices=BLEND_MODES))
    sigma_scale: float | tuple[float, ...] | None = field(
        default=None, metadata=_option("Gaussian sigma scale in place of the model's", _numbers(float))
    )
    folds: int | None = field(default=None, metadata=_option("nnU-Net folds in place of the model's", _integer))

    def __post_init__(self) -> None:
        normalised = {
            "features": checked_choice(self.features, "features", FEATURE_KINDS),
            "foreground": _checked_foreground(self.foreground),
            "n_features": checked_integer(self.n_features, "n_features"),
            "value": checked_choice(self.value, "value", VALUE_NAMES),
            "baseline": _checked_baseline(self.baseline),
            "nsamples": _checked_nsamples(self.nsamples),
            "tolerance": None if self.tolerance is None else checked_number(self.tolerance, "tolerance", below=1),
            "design": checked_choice(self.design, "design", DESIGNS),
            "max_forwards": None if self.max_forwards is None else checked_integer(self.max_forwards, "max_forwards"),
            "max_seconds": None if self.max_seconds is None else checked_number(self.max_seconds, "max_seconds"),
            "faithfulness": _checked_bool(self.faithfulness, "faithfulness"),
            "seed": checked_integer(self.seed, "seed", 0),
            "device": _checked_device(self.device),
            "batch_size": checked_integer(self.batch_size, "batch_size"),
            "margin": checked_integer(self.margin, "margin", 0),
            "cache_bytes": checked_integer(self.cache_bytes, "cache_bytes", 0),
            "autocast_dtype": _checked_autocast(self.autocast_dtype),
            "tiling": None if self.tiling is None else checked_choice(self.tiling, "tiling", TILING_SCHEMES),
            "patch_size": _checked_per_axis(self.patch_size, "patch_size", checked_integer),
            "overlap": _checked_per_axis(self.overlap, "overlap", _checked_overlap),
            "blend": None if self.blend is None else checked_choice(self.blend, "blend", BLEND_MODES),
            "sigma_scale": _checked_per_axis(self.sigma_scale, "sigma_scale", checked_number),
            "folds": None if self.folds is None else checked_integer(self.folds, "folds"),
        }
        for name, value in normalised.items():
            object.__setattr__(self, name, value)

    @classmethod
    def from_dict(cls, values: dict | None) -> ExplainOptions:
        """The options in a dict (a worker request's ``options``, JSON lists for tuples); missing ones default.

        Raises
        ------
        ArgumentError
            For an unknown or bad option, named by its key.
        """
        values = dict(values or {})
        unknown = sorted(set(values) - set(OPTION_NAMES))
        if unknown:
            raise ArgumentError(
                unknown[0], f"Unknown option {{argument}}; the options are {', '.join(OPTION_NAMES)}.", unknown[0]
            )
        return cls(**{name: tuple(v) if isinstance(v, list) else v for name, v in values.items()})

    @classmethod
    def given(cls, options: ExplainOptions | None, values: dict) -> ExplainOptions:
        """``options`` (default: every default) with ``values`` (options by name, as keywords give them) in place.

        Raises
        ------
        ArgumentError
            For an unknown or bad option, named by its key.
        """
        return cls.from_dict({**(options.to_dict() if options is not None else {}), **values})

    def to_dict(self) -> dict:
        """Every option under its name, tuples as lists: what :meth:`from_dict` reads back."""
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}

    def replace(self, **changes) -> ExplainOptions:
        """These options with some changed (checked as when made)."""
        return dataclasses.replace(self, **changes)

    def tiling_settings(self) -> dict:
        """The sliding-window settings given in place of the model's, under their keyword names
        (:data:`segshap.tiling.TilingSpec.KEYWORDS`)."""
        return {name: getattr(self, name) for name in TilingSpec.KEYWORDS if getattr(self, name) is not None}

    @property
    def torch_autocast_dtype(self):
        """:attr:`autocast_dtype` as a ``torch.dtype`` (``None`` for full precision)."""
        import torch

        return None if self.autocast_dtype is None else getattr(torch, self.autocast_dtype)


OPTION_NAMES = tuple(f.name for f in fields(ExplainOptions))
"""The options' names: the keywords of :func:`segshap.explain` beside its inputs, the keys of a request's
``options``."""


ARRAY_OPTIONS = ("features", "baseline", "foreground")
"""The options that also take an array, which is then an input: a feature map, a baseline image, a foreground
mask."""


def split_arrays(values: dict) -> tuple[dict, dict[str, np.ndarray]]:
    """Keyword options with those given as arrays (:data:`ARRAY_OPTIONS`) taken out: ``(options, arrays)``.
    ``features=``, ``baseline=`` and ``foreground=`` take either a name (an option) or an array (an input)."""
    values = dict(values)
    arrays = {name: values.pop(name) for name in ARRAY_OPTIONS if _is_array(values.get(name))}
    return values, arrays


def _is_array(value) -> bool:
    return value is not None and not isinstance(value, (str, int, float, np.number))


def add_option_flags(parser: argparse.ArgumentParser, defaults: dict | None = None) -> None:
    """Add a flag per option (``--n-features``, ``--no-faithfulness``...); each defaults to ``None``, meaning the
    option's own default (or the command's, as ``defaults`` says for its help), so that only the options given
    reach the request."""
    for option in fields(ExplainOptions):
        meta, flag = option.metadata, "--" + option.name.replace("_", "-")
        help_text = meta["help"]
        if defaults and option.name in defaults:
            help_text = re.sub(r"\(default [^)]*\)", f"(default {defaults[option.name]})", help_text)
        if option.type == "bool":
            parser.add_argument(
                "--no-" + option.name, dest=option.name, action="store_const", const=False, help=help_text
            )
            continue
        parser.add_argument(
            flag,
            dest=option.name,
            type=meta["parse"],
            choices=meta["choices"],
            metavar=meta["metavar"] or (None if meta["choices"] else option.name.upper()),
            help=help_text,
        )


def options_from_flags(args: argparse.Namespace) -> dict:
    """The options given on the command line (the ``options`` of a request)."""
    return {name: getattr(args, name) for name in OPTION_NAMES if getattr(args, name, None) is not None}


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def _checked_bool(value, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise ArgumentError(name, f"{{argument}} must be True or False, got {value!r}.")
    return bool(value)


def _checked_baseline(value) -> str | float:
    if isinstance(value, str):
        return checked_choice(value, "baseline", BASELINES)
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not np.isfinite(value):
        raise ArgumentError("baseline", f"{{argument}} must be one of {', '.join(BASELINES)} or a finite number.")
    return float(value)


def _checked_foreground(value) -> str:
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or (value not in FOREGROUND_CHOICES and not Path(value).is_file()):
        raise ArgumentError(
            "foreground",
            f"{{argument}} must be {' or '.join(FOREGROUND_CHOICES)}, a mask file or (in Python) a bool array; got "
            f"{value!r}" + (", which is no file" if isinstance(value, str) else "") + ".",
        )
    return value


def _checked_nsamples(value) -> int | str:
    if isinstance(value, str) and value == "auto":
        return value
    if not is_integer(value) or value < 2:
        raise ArgumentError("nsamples", f"{{argument}} must be 'auto' or an integer >= 2 (coalitions), got {value!r}.")
    return int(value)


def _checked_device(value) -> str:
    text = value if isinstance(value, str) else str(value)  # a torch.device reads as its name
    if not _DEVICE.fullmatch(text):
        raise ArgumentError("device", f"{{argument}} must be auto, cpu, cuda, cuda:N or mps; got {value!r}.")
    return text


def _checked_autocast(value) -> str | None:
    if value is None:
        return None
    name = str(value).removeprefix("torch.") if not isinstance(value, str) else value
    return checked_choice(name, "autocast_dtype", AUTOCAST_DTYPES)


def _checked_overlap(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not 0 <= value < 1:
        raise ArgumentError(name, f"{{argument}} must lie in [0, 1), got {value!r}.")
    return float(value)


def _checked_per_axis(value, name: str, check):
    """``None``, one checked value, or a tuple of three."""
    if value is None:
        return None
    if isinstance(value, (tuple, list, np.ndarray)):
        if len(value) != 3:
            raise ArgumentError(name, f"{{argument}} needs one value or three (one per axis), got {value!r}.")
        return tuple(check(v, name) for v in value)
    if is_integer(value) or isinstance(value, (float, np.floating)):
        return check(value, name)
    raise ArgumentError(name, f"{{argument}} needs one value or three (one per axis), got {value!r}.")
