"""Configuration of the synthetic corpus: sizes, durations, formats and raters (the `synth` config group).

`SynthConfig(**conf.synth)` validates every value and names the allowed ones; presets live in
`conf/synth/<name>.yaml` and load with `load_preset(name)`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from dsaml.config import CONFIG_DIR

LAYOUTS = ("nested", "flat")
BITRATE_MODES = ("VARIABLE", "CONSTANT", "AVERAGE")
# DEAM's id ranges: 2013 excerpts (anonymous raters), 2014 excerpts (WorkerId), 2015 full songs (WorkerId).
ID_RANGES = {"n_songs_2013": (2, 1000), "n_songs_2014": (1001, 2000), "n_songs_2015": (2001, 2058)}


class SynthConfigError(ValueError):
    """A synth config value is missing, unknown or out of range."""


@dataclass
class SynthConfig:
    """Sizes and behaviour of one synthetic DEAM-format corpus (see conf/synth/*.yaml for the presets)."""

    name: str
    n_songs_2013: int  # 45 s excerpts with ids 2..1000; per-rater files without WorkerId
    n_songs_2014: int  # 45 s excerpts with ids 1001..2000; per-rater files with WorkerId (PDMER training)
    n_songs_2015: int  # full songs with ids 2001..2058; per-rater files with WorkerId (test)
    n_raters: int  # size of the persistent rater pool
    raters_per_clip: list[int] = field(default_factory=lambda: [8, 10])  # [min, max] per excerpt
    raters_per_full_song: list[int] = field(default_factory=lambda: [4, 6])  # [min, max] per full song
    clip_seconds: list[float] = field(default_factory=lambda: [44.6, 45.6])  # excerpt durations [min, max]
    full_song_seconds: list[float] = field(default_factory=lambda: [60.0, 300.0])  # full songs [min, max]
    idiosyncratic_fraction: float = 0.3  # share of raters of an idiosyncratic kind
    activity_spread: float = 0.6  # lognormal sigma of how often each rater is picked
    flat_probability: float = 0.03  # chance that a rating is an unmoved (flat) slider
    share_48k: float = 0.08  # share of songs written at 48 kHz
    share_22k: float = 0.08  # share written at 22.05 kHz
    share_16k: float = 0.0  # share written at 16 kHz (the rest: 44.1 kHz)
    share_mono: float = 0.1  # share written mono (the rest: stereo)
    mp3_compression_level: float = 0.9  # soundfile compression_level in [0, 1) (1 fails for 44.1 kHz)
    mp3_bitrate_mode: str = "VARIABLE"

    def __post_init__(self) -> None:
        for key, (lo, hi) in ID_RANGES.items():
            value = getattr(self, key)
            if not isinstance(value, int) or not 0 <= value <= hi - lo + 1:
                raise SynthConfigError(
                    f"synth.{key}={value!r}: expected an integer in 0..{hi - lo + 1} (ids {lo}..{hi})"
                )
        if self.n_songs_2013 + self.n_songs_2014 + self.n_songs_2015 == 0:
            raise SynthConfigError("synth: all n_songs_* are 0; expected at least one song")
        if not isinstance(self.n_raters, int) or self.n_raters < 1:
            raise SynthConfigError(f"synth.n_raters={self.n_raters!r}: expected an integer >= 1")
        for key in ("raters_per_clip", "raters_per_full_song"):
            lo, hi = _pair(self, key)
            if not (isinstance(lo, int) and isinstance(hi, int) and 1 <= lo <= hi <= self.n_raters):
                raise SynthConfigError(
                    f"synth.{key}={list(getattr(self, key))!r}: expected integers "
                    "1 <= min <= max <= n_raters "
                    f"({self.n_raters})"
                )
        lo, hi = _pair(self, "clip_seconds")
        if not 30.5 <= lo <= hi <= 60.0:
            raise SynthConfigError(f"synth.clip_seconds=[{lo}, {hi}]: expected 30.5 <= min <= max <= 60")
        lo, hi = _pair(self, "full_song_seconds")
        if not 46.0 <= lo <= hi <= 900.0:
            raise SynthConfigError(
                f"synth.full_song_seconds=[{lo}, {hi}]: expected 46 <= min <= max <= 900 "
                "(PDMER needs > 60 labels)"
            )
        for key in (
            "idiosyncratic_fraction",
            "flat_probability",
            "share_48k",
            "share_22k",
            "share_16k",
            "share_mono",
        ):
            if not 0.0 <= float(getattr(self, key)) <= 1.0:
                raise SynthConfigError(f"synth.{key}={getattr(self, key)!r}: expected a value in [0, 1]")
        if self.share_48k + self.share_22k + self.share_16k > 1.0:
            raise SynthConfigError("synth.share_48k + synth.share_22k + synth.share_16k must be <= 1")
        if not 0.0 <= float(self.activity_spread) <= 3.0:
            raise SynthConfigError(
                f"synth.activity_spread={self.activity_spread!r}: expected a value in [0, 3]"
            )
        if not 0.0 <= float(self.mp3_compression_level) < 1.0:
            raise SynthConfigError(
                f"synth.mp3_compression_level={self.mp3_compression_level!r}: expected a value in [0, 1)"
            )
        if self.mp3_bitrate_mode not in BITRATE_MODES:
            raise SynthConfigError(
                f"synth.mp3_bitrate_mode={self.mp3_bitrate_mode!r}: expected one of {BITRATE_MODES}"
            )

    @classmethod
    def from_mapping(cls, values: Any) -> SynthConfig:
        """Build from a dict / DictConfig, failing on unknown keys with the list of known ones."""
        values = OmegaConf.to_container(values, resolve=True) if OmegaConf.is_config(values) else dict(values)
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise SynthConfigError(f"synth: unknown key(s) {unknown}; allowed keys: {known}")
        missing = [
            f.name
            for f in dataclasses.fields(cls)
            if f.name not in values
            and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        ]
        if missing:
            raise SynthConfigError(f"synth: missing key(s) {missing}")
        return cls(**values)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _pair(cfg: SynthConfig, key: str) -> tuple[Any, Any]:
    value = list(getattr(cfg, key))
    if len(value) != 2:
        raise SynthConfigError(f"synth.{key}={value!r}: expected [min, max]")
    return value[0], value[1]


def preset_names() -> list[str]:
    """Names of the presets in conf/synth/."""
    return sorted(p.stem for p in (Path(CONFIG_DIR) / "synth").glob("*.yaml"))


def load_preset(name: str) -> SynthConfig:
    """The preset conf/synth/<name>.yaml as a validated SynthConfig."""
    path = Path(CONFIG_DIR) / "synth" / f"{name}.yaml"
    if not path.is_file():
        raise SynthConfigError(f"unknown synth preset {name!r}; allowed: {preset_names()}")
    return SynthConfig.from_mapping(OmegaConf.load(path))


def check_run_options(layout: str, workers: int | None, seed: int) -> None:
    """Validate the run-level options shared by the CLI and the Python API."""
    if layout not in LAYOUTS:
        raise SynthConfigError(f"layout={layout!r}: expected one of {LAYOUTS}")
    if workers is not None and (not isinstance(workers, int) or workers < 1):
        raise SynthConfigError(f"workers={workers!r}: expected an integer >= 1 or null (one per CPU core)")
    if not isinstance(seed, int) or seed < 0:
        raise SynthConfigError(f"seed={seed!r}: expected an integer >= 0")
