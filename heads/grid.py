"""Hyper-parameter grids of `heads sweep`: configurations, their folder names, and what trains together.

`--lr 1e-4,3e-4 --layers 1,3,5 --circuit-init uniform,normal --feature-norm none,standardize
--batch-size 16,32 --patience 3,5 --noise-scale 0,1 --trajectories 1,4` sweep the product of the
values (the last two with `--noise MODEL`: scale 0 trains the ideal circuit). A configuration is one value per
setting; its run folder level is named for the settings that VARY and apply to the model, in the
order of `SETTINGS`: `lr-1e-4_layers-3`. CDL has no circuit, so `--layers` and `--circuit-init`
do not apply to it: its configurations are the product of the other settings (a CDL of a grid that
varies only `--layers` has one configuration, named "", and its runs stay `cdl/seed-<s>/`).
A sweep whose every setting has one value has one configuration per model, named "": the run
layout of a sweep without a grid.

Values are named in a normal form (`format_value`): floats below 1e-2 as `1e-4`, `3e-4` (so `1e-4`
and `0.0001` name one folder), others by Python's shortest repr; integers and words as given.

Configurations with the same compiled shapes train together in one program (`shape_key`): the
learning rate, patience and circuit initialiser are per-member data (`heads.train.Member`), the
circuit depth, batch size, noise scale and trajectories change the program, and the feature
normalisation its input array.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

from cxrfeat.errors import UserError

SETTINGS = ("lr", "layers", "circuit_init", "feature_norm", "batch_size", "patience", "noise_scale",
            "trajectories")  # the naming order
DQC_ONLY = ("layers", "circuit_init", "noise_scale", "trajectories")
PER_MEMBER = ("lr", "patience", "circuit_init")  # data in the compiled program, not a recompile
_KIND = {"lr": float, "layers": int, "batch_size": int, "patience": int, "circuit_init": str, "feature_norm": str,
         "noise_scale": float, "trajectories": int}


def option(setting: str) -> str:
    """The command-line option of a setting: `circuit_init` -> `--circuit-init`."""
    return "--" + setting.replace("_", "-")


def format_value(value) -> str:
    """A stable, readable spelling of a setting's value for folder names and sweep.json."""
    if isinstance(value, float):
        if value != 0 and abs(value) < 1e-2:
            mantissa, exponent = f"{value:.12e}".split("e")
            mantissa = mantissa.rstrip("0").rstrip(".")
            return f"{mantissa}e{int(exponent)}"
        return repr(value)
    return str(value)


def parse_values(setting: str, text: str | float | int) -> list:
    """A comma-separated option value as a list of distinct typed values (first occurrence kept)."""
    kind = _KIND[setting]
    parts = [p.strip() for p in str(text).split(",")]
    if not parts or any(not p for p in parts):
        raise UserError(f"{option(setting)} {text!r}: give one value or a comma-separated list, e.g. "
                        f"{'1e-4,3e-4' if kind is float else '16,32' if kind is int else 'a,b'}")
    values = []
    for p in parts:
        try:
            v = kind(p)
        except ValueError:
            raise UserError(f"{option(setting)} {text!r}: {p!r} is not {'a number' if kind is float else 'an integer'}") from None
        if kind is float and not math.isfinite(v):
            raise UserError(f"{option(setting)} {text!r}: {p!r} is not a finite number")
        if format_value(v) not in (format_value(x) for x in values):
            values.append(v)
    return values


@dataclass(frozen=True)
class Config:
    """One configuration of a grid for one model: `name` (the folder level, "" when nothing varies
    for this model), `point` (the varying settings' values) and `values` (every setting's value)."""

    name: str
    point: dict
    values: dict

    def record(self) -> dict:
        """config.json `grid`."""
        return {"name": self.name, "point": dict(self.point)}


def applies(setting: str, model: str) -> bool:
    return model == "dqc" or setting not in DQC_ONLY


def configurations(values: dict[str, list], model: str) -> list[Config]:
    """The configurations of `model` over `values` (every setting of `SETTINGS` -> its list), in
    grid order (the first setting outermost)."""
    own = {s: (values[s] if applies(s, model) else values[s][:1]) for s in SETTINGS}
    varying = [s for s in SETTINGS if len(own[s]) > 1]
    out = []
    for combo in itertools.product(*(own[s] for s in SETTINGS)):
        full = dict(zip(SETTINGS, combo, strict=True))
        point = {s: full[s] for s in varying}
        name = "_".join(f"{option(s)[2:]}-{format_value(v)}" for s, v in point.items())
        out.append(Config(name, point, full))
    return out


def varying(values: dict[str, list]) -> list[str]:
    return [s for s in SETTINGS if len(values[s]) > 1]


def shape_key(config: Config, model: str) -> tuple:
    """Configurations with equal keys train together in one compiled program (see module docstring)."""
    v = config.values
    dqc = model == "dqc"
    return (v["layers"] if dqc else None, v["batch_size"], v["feature_norm"],
            (v["noise_scale"], v["trajectories"]) if dqc else None)
