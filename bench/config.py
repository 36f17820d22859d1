"""One rule for protocols, presets and deviations, for every command.

Each command has one frozen config dataclass whose defaults are its published protocol. A preset
(e.g. "smoke" for the embedded world) changes some of them, but never a value the user gave; every
value that then differs from the protocol is a deviation, whoever set it, and goes into the record.
"""
from __future__ import annotations

import json
from dataclasses import MISSING, fields, replace
from pathlib import Path
from typing import Any, Mapping


def dataclass_defaults(cfg_or_cls) -> dict[str, Any]:
    """{field: default} of a dataclass (default factories called)."""
    return {f.name: f.default if f.default is not MISSING else f.default_factory() for f in fields(cfg_or_cls)}


def protocol_values(cfg_or_cls, names) -> dict[str, Any]:
    """The dataclass defaults of `names`: the published protocol's values."""
    defaults = dataclass_defaults(cfg_or_cls)
    return {name: defaults[name] for name in names}


#: the preset every evaluation gets on the embedded world unless one is named
EMBEDDED_PRESET = "smoke"


def resolve(cfg, presets: Mapping[str, Mapping[str, Any]] | None, explicit, protocol: Mapping[str, Any],
            data_fields=()):
    """(cfg with its preset applied to the fields the user did not give, deviations).

    data_fields: the config's dataset folders; when one is None (the embedded world, written later by
    the evaluation entry) and no preset is named, the preset is the config's EMBEDDED_PRESET (class
    attribute; default EMBEDDED_PRESET, None = the protocol).

    cfg: a frozen dataclass holding the protocol defaults overridden by the user's values; its
    `preset` field (when it has one) names an entry of `presets` ({name: {field: value}}; an unknown
    name is a ValueError); explicit: names of the fields the user gave (command line or --config
    file); protocol: {field: published value}; deviations = {field: value used} where they differ,
    plus {"preset": name} when a preset was applied."""
    embedded_preset = getattr(cfg, "EMBEDDED_PRESET", EMBEDDED_PRESET)  # a config may keep the protocol there
    if (getattr(cfg, "preset", None) is None and embedded_preset is not None
            and any(getattr(cfg, f) is None for f in data_fields)):
        cfg = replace(cfg, preset=embedded_preset)
    name = getattr(cfg, "preset", None)
    if name is not None and name not in (presets or {}):
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(presets or {})}")
    explicit = set(explicit)
    preset = (presets or {}).get(name) or {}
    cfg = replace(cfg, **{k: v for k, v in preset.items() if k not in explicit})
    deviations = {k: _plain(getattr(cfg, k)) for k, v in protocol.items() if getattr(cfg, k) != v}
    if name is not None:
        deviations["preset"] = name
    return cfg, deviations


def preset_line(kind: str, deviations: dict, embedded: bool) -> str:
    """One line, printed before a command's progress bar: the preset that ran (if any) and every value that
    differs from the protocol."""
    changed = {k: v for k, v in deviations.items() if k != "preset"}
    values = ", ".join(f"{k}={v}" for k, v in changed.items()) or "none"
    where = "the embedded world" if embedded else "your data"
    preset = deviations.get("preset")
    if preset:
        return f"{kind}: preset {preset} on {where}; differs from the protocol: {values}"
    return f"{kind}: no preset, on {where}; differs from the protocol: {values}"


def scale_lr_step(cfg, deviations: dict, explicit, protocol_iters: int, presets=None):
    """One --iters scales the whole schedule: unless typed, cfg.lr_step becomes the protocol's step scaled
    by iters / protocol_iters (at least 1), recorded in `deviations`; a preset that sets lr_step (presets:
    {name: {field: value}}, the one applied named in deviations["preset"]) sets it for its own iters, and
    it scales from there. Returns the config."""
    if "lr_step" in set(explicit):
        return cfg
    preset = (presets or {}).get(deviations.get("preset")) or {}
    base_iters = preset.get("iters", protocol_iters) if "lr_step" in preset else protocol_iters
    if cfg.iters == base_iters:
        return cfg
    cfg = replace(cfg, lr_step=max(1, round(cfg.lr_step * cfg.iters / base_iters)))
    deviations["lr_step"] = cfg.lr_step
    return cfg


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def load_config_file(path, cls, command: str) -> dict[str, Any]:
    """The options of a run's config.json (written by bench.runs.RunFolder) that `cls` knows;
    ValueError naming the file when it is not one, or was written by another command."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
        saved_command, values = doc["command"], doc["config"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not a cpfs-bench run config (config.json with 'command' and 'config'): {e}") from None
    if saved_command != command:
        raise ValueError(f"{path}: written by `bench {saved_command}`, not `bench {command}`")
    names = {f.name for f in fields(cls)}
    out = {}
    for k, v in values.items():
        if k in names:
            out[k] = tuple(v) if isinstance(v, list) else v
    return out
