"""A study's config made from its layers: defaults, a resumed study's own fixed settings, the
TOML file and the flags (:func:`study_config`, once per command)."""

from __future__ import annotations

import tomllib
from pathlib import Path

from kdnas.core.errors import KdnasError
from kdnas.core.settings import SearchConfig, fixed_settings


def load_config(path: str | Path | None, overrides: dict,
                stored: SearchConfig | None = None) -> SearchConfig:
    """Defaults, then a resumed study's own fixed settings (``stored``), then the TOML file
    (if any), then explicit flags (``None`` means unset)."""
    return _merged(_file_values(path), overrides, stored)


def study_config(path: str | Path | None, overrides: dict,
                 find_stored) -> tuple[SearchConfig, list[str]]:
    """The config of ``kdnas search``, made once: the file read once, merged with the flags
    and, where the study exists (``find_stored(cfg)`` returns its stored config), with the
    study's own fixed settings under them. Returns the config and the fixed settings it kept
    from the study that the file and flags did not set ("seed 3")."""
    values = _file_values(path)
    cfg = _merged(values, overrides, None)
    stored = find_stored(cfg)
    if stored is None:
        return cfg, []
    kept = _merged(values, overrides, stored)
    return kept, [f"{k} {getattr(kept, k)!r}" for k in fixed_settings()
                  if getattr(kept, k) != getattr(cfg, k)]


def _file_values(path: str | Path | None) -> dict:
    if path is None:
        return {}
    p = Path(path)
    if not p.is_file():
        raise KdnasError(f"study config {str(p)!r} does not exist (see studies/ for examples)")
    try:
        values = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as e:
        raise KdnasError(f"cannot parse {p}: {e}") from None
    return {k.replace("-", "_"): v for k, v in values.items()}


def _merged(file_values: dict, overrides: dict, stored: SearchConfig | None) -> SearchConfig:
    values: dict = {k: v for k, v in (stored.to_dict() if stored else {}).items()
                    if k in fixed_settings()}
    values.update(file_values)
    values.update({k: v for k, v in overrides.items() if v is not None})
    return SearchConfig.from_dict(values)
