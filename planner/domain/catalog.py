"""Device and model catalogs: TOML cards under ``instances/catalog/{devices,models}/``.

The catalog folder is found through ``$MOEPLAN_CATALOG`` when set, else next to the installed
sources (``<repo>/instances/catalog``). Cards are parsed as data only.
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

from planner.domain import fields as F
from planner.domain.device import CARD_FIELDS, Device, device_fields
from planner.domain.errors import Collector, InputError, Problem
from planner.domain.files import read_toml
from planner.domain.moe_model import MoEModel, model_from_dict
from planner.domain.profile import HardwareProfile

REPO_ROOT = Path(__file__).resolve().parents[2]


def catalog_dir() -> Path:
    env = os.environ.get("MOEPLAN_CATALOG")
    return Path(env) if env else REPO_ROOT / "instances" / "catalog"


def available(kind: str) -> list[str]:
    """Names of the cards of ``kind`` ("devices" or "models")."""
    folder = catalog_dir() / kind
    return sorted(p.stem for p in folder.glob("*.toml"))


def _card_path(kind: str, name: str, file: str, field: str) -> Path:
    path = catalog_dir() / kind / f"{name}.toml"
    if not path.is_file():
        names = ", ".join(available(kind)) or "(catalog empty)"
        raise InputError(Problem(file, field, f"unknown {kind[:-1]} {name!r}; the catalog has: {names}"))
    return path


def load_model_card(path: Path) -> MoEModel:
    data = read_toml(path)
    col = Collector(str(path))
    table = data.get("model")
    if not isinstance(table, dict):
        raise InputError(Problem(str(path), "model", "is required (a table)"))
    model = model_from_dict(table, "model", col, source=data.get("source") if isinstance(data.get("source"), dict) else {})
    col.raise_if_any()
    return model


@cache
def _cached_card(load, path: str, mtime: float):
    """``load(path)``, read again only when the file's modification time changes."""
    return load(Path(path))


def model(name: str, *, file: str = "<catalog>", field: str = "model.catalog") -> MoEModel:
    """A model card from the catalog by name."""
    path = _card_path("models", name, file, field)
    return _cached_card(load_model_card, str(path), path.stat().st_mtime)


def load_device_card(path: Path) -> Device:
    data = read_toml(path)
    col = Collector(str(path))
    table = data.get("device")
    if not isinstance(table, dict):
        raise InputError(Problem(str(path), "device", "is required (a table)"))
    F.unknown_keys(table, CARD_FIELDS, "device", col)
    kwargs = device_fields(table, "device", col, base=None)
    profile = load_profile_field(table, "device", path.parent, col)
    col.raise_if_any()
    name = table.get("name") if isinstance(table.get("name"), str) else path.stem
    return Device(name=name, kind=path.stem, source=data.get("source", {}), profile=profile, **kwargs)


def load_profile_field(table: dict, table_path: str, base_dir: Path, col: Collector):
    """The measured profile named by ``table.profile`` (a path relative to ``base_dir``), or None."""
    if "profile" not in table:
        return None
    ref = F.string(table, "profile", table_path, col)
    if ref is None:
        return None
    try:
        return HardwareProfile.load(base_dir / ref)
    except InputError as exc:
        col.extend_referenced(exc.problems, f"{table_path}.profile", ref)
        return None


def device(name: str, *, file: str = "<catalog>", field: str = "devices.catalog") -> Device:
    """A device card from the catalog by name."""
    path = _card_path("devices", name, file, field)
    return _cached_card(load_device_card, str(path), path.stat().st_mtime)
