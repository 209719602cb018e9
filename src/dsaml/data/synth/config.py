"""Configuration of the synthetic corpus: sizes, durations, formats and raters (the `synth` config group).

`SynthConfig(**conf.synth)` validates every value and names the allowed ones; presets live in
`conf/synth/<name>.yaml` and load with `load_preset(name)`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from dsaml.config import (
    CONFIG_DIR,
    Config,
    ConfigError,
    choice,
    group,
    integer,
    integer_pair,
    number,
    number_pair,
    text,
)

LAYOUTS = ("nested", "flat")
BITRATE_MODES = ("VARIABLE", "CONSTANT", "AVERAGE")
AUDIO_FORMATS = ("mp3", "flac")  # audio files the DEAM reader accepts in MEMD_audio/ (besides wav, ogg)
# DEAM's id ranges: 2013 excerpts (anonymous raters), 2014 excerpts (WorkerId), 2015 full songs (WorkerId).
# The lens keys' defaults (no lens raters): a corpus written before they existed compares equal with them.
LENS_DEFAULTS = {"lens_fraction": 0.0, "lens_concentration": 0.5}
ID_RANGES = {"n_songs_2013": (2, 1000), "n_songs_2014": (1001, 2000), "n_songs_2015": (2001, 2058)}


def _song_count(key: str) -> Any:
    lo, hi = ID_RANGES[key]
    return integer(low=0, high=hi - lo + 1)


def _share(default: float) -> Any:
    return number(default, low=0.0, high=1.0)


@dataclass
class SynthConfig(Config):
    """Sizes and behaviour of one synthetic DEAM-format corpus (see conf/synth/*.yaml for the presets)."""

    SECTION = "synth"

    name: str = text()
    n_songs_2013: int = _song_count("n_songs_2013")  # 45 s excerpts, ids 2..1000; no WorkerId
    n_songs_2014: int = _song_count("n_songs_2014")  # 45 s excerpts, ids 1001..2000; with WorkerId (PDMER)
    n_songs_2015: int = _song_count("n_songs_2015")  # full songs, ids 2001..2058; with WorkerId (test)
    n_raters: int = integer(low=1)  # size of the persistent rater pool
    raters_per_clip: list[int] = integer_pair([8, 10], low=1)  # [min, max] raters per excerpt
    raters_per_full_song: list[int] = integer_pair([4, 6], low=1)  # [min, max] raters per full song
    clip_seconds: list[float] = number_pair([44.6, 45.6])  # excerpt durations [min, max]
    full_song_seconds: list[float] = number_pair([60.0, 300.0])  # full song durations [min, max]
    idiosyncratic_fraction: float = _share(0.3)  # share of raters of an idiosyncratic kind
    activity_spread: float = number(0.6, low=0.0, high=3.0)  # lognormal sigma of how often a rater is picked
    flat_probability: float = _share(0.03)  # chance that a rating is an unmoved (flat) slider
    # share of lens raters (own weights over the music's cues, docs/listeners.md); > 0 gives every song
    # independent cue curves (the song's curves are then their means: the mean listener's)
    lens_fraction: float = _share(LENS_DEFAULTS["lens_fraction"])
    # Dirichlet concentration of a lens rater's cue weights (< 1: most lean on one or two cues)
    lens_concentration: float = number(LENS_DEFAULTS["lens_concentration"], low=0.0, low_open=True)
    share_48k: float = _share(0.08)  # share of songs written at 48 kHz
    share_22k: float = _share(0.08)  # share written at 22.05 kHz
    share_16k: float = _share(0.0)  # share written at 16 kHz (the rest: 44.1 kHz)
    share_mono: float = _share(0.1)  # share written mono (the rest: stereo)
    # soundfile compression_level in [0, 1) (1 fails for 44.1 kHz)
    mp3_compression_level: float = number(0.9, low=0.0, high=1.0, high_open=True)
    mp3_bitrate_mode: str = choice("VARIABLE", BITRATE_MODES)
    # mp3: DEAM's own container; flac: lossless 16-bit, ~13x cheaper to encode, ~12x larger on disk
    audio_format: str = choice("mp3", AUDIO_FORMATS)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_songs_2013 + self.n_songs_2014 + self.n_songs_2015 == 0:
            raise ConfigError("synth: all n_songs_* are 0; expected at least one song")
        for key in ("raters_per_clip", "raters_per_full_song"):
            lo, hi = getattr(self, key)
            if not lo <= hi <= self.n_raters:
                raise ConfigError(
                    f"synth.{key}={list(getattr(self, key))!r}: expected integers "
                    f"1 <= min <= max <= n_raters ({self.n_raters})"
                )
        lo, hi = self.clip_seconds
        if not 30.5 <= lo <= hi <= 60.0:
            raise ConfigError(f"synth.clip_seconds=[{lo}, {hi}]: expected 30.5 <= min <= max <= 60")
        lo, hi = self.full_song_seconds
        if not 46.0 <= lo <= hi <= 900.0:
            raise ConfigError(
                f"synth.full_song_seconds=[{lo}, {hi}]: expected 46 <= min <= max <= 900 "
                "(PDMER needs > 60 labels)"
            )
        if self.idiosyncratic_fraction + self.lens_fraction > 1.0:
            raise ConfigError(
                f"synth.idiosyncratic_fraction + synth.lens_fraction = "
                f"{self.idiosyncratic_fraction + self.lens_fraction:g}: expected <= 1"
            )
        if self.share_48k + self.share_22k + self.share_16k > 1.0:
            raise ConfigError("synth.share_48k + synth.share_22k + synth.share_16k must be <= 1")


def preset_names() -> list[str]:
    """Names of the presets in conf/synth/."""
    return sorted(p.stem for p in (Path(CONFIG_DIR) / "synth").glob("*.yaml"))


def load_preset(name: str) -> SynthConfig:
    """The preset conf/synth/<name>.yaml as a validated SynthConfig."""
    path = Path(CONFIG_DIR) / "synth" / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown synth preset {name!r}; allowed: {preset_names()}")
    return SynthConfig.from_mapping(OmegaConf.load(path))


@dataclass(frozen=True)
class SynthRun(Config):
    """The run-level options of a corpus generation (conf/synth.yaml's top level; `generate_corpus`'s
    arguments): seed, layout (nested | flat), workers (None: one per CPU core), out (the corpus folder;
    None from the Python API, which takes it as `root`); synth and paths are groups of their own."""

    seed: int = integer(0, low=0)
    layout: str = choice("nested", LAYOUTS)
    workers: int | None = integer(None, low=1, optional=True)
    out: str | None = text(None, optional=True)
    synth: Any = group()
    paths: Any = group()
