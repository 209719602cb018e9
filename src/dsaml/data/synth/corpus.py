"""Generate a synthetic corpus in DEAM's format with a known, learnable emotion signal.

`generate_corpus(root, "tiny", seed=0)` plans the songs (ids, durations, formats, true curves, raters),
renders the audio to MP3 (or FLAC: `audio_format`) in a process pool (rich progress bar), writes DEAM's
annotation files and finally the ground truth `synth_truth.json` in the corpus root. Everything is a
function of (config, seed).

Ground truth (`load_truth(root)`): {"format", "seed", "layout", "config", "curve_rate_hz" (2.0),
"label_start_index" (30), "audio_dir", "annotations_dir" (relative to root), "songs": {id: {"kind"
("clip" | "full"), "audio" (path relative to root), "duration_s", "n_samples", "sample_rate", "channels",
"arousal", "valence" (true curves at 2 Hz from t = 0: value k describes [0.5 k, 0.5 k + 0.5) s, so DEAM
label i is value 30 + i), "n_arousal", "n_valence" (labels in the files), "raters" (rater ids in file row
order), "flat" (per rater: unmoved slider), in lens corpora "cues" ({cue: curve at 2 Hz from t = 0}; the
song's "arousal"/"valence" are then the means of its arousal/valence cues)}}, "raters": {id: {"kind",
"activity", "flat_probability", "arousal": {"gain", "offset", "lag", "noise"}, "valence": {...}, lens raters
only: "cue_weights": {"arousal": {cue: weight}, "valence": {...}}}}} (docs/listeners.md).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
from rich.console import Console

from dsaml.config import ConfigError
from dsaml.data.synth import deam_tree
from dsaml.data.synth.config import ID_RANGES, LENS_DEFAULTS, SynthConfig, SynthRun, load_preset
from dsaml.data.synth.curves import CURVE_RATE_HZ, LABEL_START_INDEX, LABEL_START_S, song_curves, true_curve
from dsaml.data.synth.music import AROUSAL_CUES, VALENCE_CUES, render_music
from dsaml.data.synth.raters import make_pool, pick_raters, rate_song
from dsaml.progress import progress_bar

TRUTH_FILE = "synth_truth.json"
INCOMPLETE_MARK = ".synth_incomplete"
TRUTH_FORMAT = 1
# Bumped whenever the same config and seed render different audio or curves (a corpus written by another
# generator version is regenerated, not reused). 2: valence also sets the register.
GENERATOR_VERSION = 2
CLIP_LABELS = 60  # DEAM's excerpts carry labels 15.0 .. 44.5 s even when they decode slightly short
PDMER_MIN_SONGS = 16  # PDMER keeps raters with > 15 non-flat songs among ids 1001..2000
FLAT_MAD = 0.01  # a curve whose mean absolute deviation over its first 60 values is below this is flat


@dataclass
class CorpusSummary:
    """What a generated corpus holds (printed by dsaml-synth)."""

    root: str
    layout: str
    preset: str
    seed: int
    n_songs: int
    n_clips: int
    n_full_songs: int
    song_ids: tuple[int, int]
    n_raters: int
    n_pdmer_raters: int  # raters with > 15 non-flat songs among ids 1001..2000
    clip_seconds: tuple[float, float] | None
    full_song_seconds: tuple[float, float] | None
    sample_rates: dict[int, int] = field(default_factory=dict)  # rate -> number of files
    channels: dict[int, int] = field(default_factory=dict)  # channels -> number of files
    truth_path: str = ""
    seconds: float = 0.0
    reused: bool = False
    replaced: str = ""  # what an earlier dsaml-synth corpus in `root` was, when this one replaced it

    def lines(self) -> list[tuple[str, str]]:
        """(label, value) rows for display."""
        span = lambda r: "-" if r is None else f"{r[0]:.1f} .. {r[1]:.1f} s"
        return [
            ("output", f"{self.root} ({self.layout} layout)"),
            ("preset / seed", f"{self.preset} / {self.seed}"),
            (
                "songs",
                f"{self.n_songs} (ids {self.song_ids[0]}..{self.song_ids[1]}): {self.n_clips} excerpts, "
                f"{self.n_full_songs} full songs",
            ),
            (
                "raters",
                f"{self.n_raters}, of which {self.n_pdmer_raters} with > 15 non-flat songs in 1001..2000",
            ),
            ("excerpt durations", span(self.clip_seconds)),
            ("full-song durations", span(self.full_song_seconds)),
            ("sample rates", ", ".join(f"{r} Hz x{n}" for r, n in sorted(self.sample_rates.items()))),
            (
                "channels",
                ", ".join(f"{'mono' if c == 1 else 'stereo'} x{n}" for c, n in sorted(self.channels.items())),
            ),
            ("ground truth", self.truth_path),
            ("time", "reused an identical existing corpus" if self.reused else f"{self.seconds:.1f} s"),
        ] + ([("replaced", self.replaced)] if self.replaced else [])


def _choose_ids(n: int, key: str, rng: np.random.Generator) -> list[int]:
    lo, hi = ID_RANGES[key]
    return sorted(int(i) for i in rng.choice(np.arange(lo, hi + 1), size=n, replace=False))


def _quota(n: int, share: float) -> int:
    """How many of n items get a property with this share (at least one when the share is positive)."""
    return min(n, int(np.ceil(share * n))) if share > 0 else 0


def _formats(n: int, cfg: SynthConfig, rng: np.random.Generator) -> tuple[list[int], list[int]]:
    """Per-song sample rates and channel counts by quota, shuffled; 44.1 kHz (the rest) keeps >= 1 song."""
    counts: dict[int, int] = {}
    for rate, share in ((48000, cfg.share_48k), (16000, cfg.share_16k), (22050, cfg.share_22k)):
        counts[rate] = min(_quota(n, share), max(n - sum(counts.values()) - 1, 0))
    counts[44100] = n - sum(counts.values())
    rates = [rate for rate, count in counts.items() for _ in range(count)]
    channels = [1] * _quota(n, cfg.share_mono) + [2] * (n - _quota(n, cfg.share_mono))
    return [rates[i] for i in rng.permutation(n)], [channels[i] for i in rng.permutation(n)]


def is_flat(curve: np.ndarray) -> bool:
    """DSAML's flat-slider test: mean absolute deviation over the first 60 values below 0.01."""
    head = np.asarray(curve[:CLIP_LABELS], dtype=np.float64)
    return bool(np.mean(np.abs(head - head.mean())) < FLAT_MAD)


def plan_corpus(cfg: SynthConfig, seed: int, layout: str) -> tuple[dict, list[dict]]:
    """The whole corpus except audio samples: (truth dict, per-song annotation dicts for deam_tree)."""
    rng = np.random.default_rng(seed)
    ids = {key: _choose_ids(getattr(cfg, key), key, rng) for key in ID_RANGES}
    pool = make_pool(
        cfg.n_raters,
        cfg.idiosyncratic_fraction,
        cfg.activity_spread,
        cfg.flat_probability,
        rng,
        cfg.lens_fraction,
        cfg.lens_concentration,
    )
    all_ids = sorted(i for v in ids.values() for i in v)
    rates, channels = _formats(len(all_ids), cfg, rng)
    audio_rel = deam_tree.audio_dir(Path("."), layout)
    songs, annotations = {}, []
    for song_id, rate, n_channels in zip(all_ids, rates, channels, strict=True):
        song_rng = np.random.default_rng([seed, song_id])
        full = song_id >= ID_RANGES["n_songs_2015"][0]
        lo, hi = cfg.full_song_seconds if full else cfg.clip_seconds
        n_samples = int(round(song_rng.uniform(lo, hi) * rate))
        duration = n_samples / rate
        cues = None
        if cfg.lens_fraction > 0:  # independent cue curves; the mean listener hears their means
            n_values = int(np.ceil(duration * CURVE_RATE_HZ)) + 2
            cues = {name: true_curve(n_values, song_rng) for name in AROUSAL_CUES + VALENCE_CUES}
            arousal = np.mean([cues[name] for name in AROUSAL_CUES], axis=0)
            valence = np.mean([cues[name] for name in VALENCE_CUES], axis=0)
        else:
            arousal, valence = song_curves(duration, song_rng)
        n_labels = int(np.floor((duration - LABEL_START_S) * CURVE_RATE_HZ)) if full else CLIP_LABELS
        lo, hi = cfg.raters_per_full_song if full else cfg.raters_per_clip
        picks = pick_raters(pool, int(song_rng.integers(lo, hi + 1)), song_rng)
        songs[str(song_id)] = {
            "kind": "full" if full else "clip",
            "audio": str(audio_rel / f"{song_id}.{cfg.audio_format}"),
            "duration_s": duration,
            "n_samples": n_samples,
            "sample_rate": rate,
            "channels": n_channels,
            "arousal": arousal,
            "valence": valence,
            "n_arousal": n_labels,
            "n_valence": n_labels,
            "raters": [pool[i].rater_id for i in picks],
            "audio_seed": int(song_rng.integers(2**31)),
        } | ({} if cues is None else {"cues": cues})
    # DEAM quirk: arousal.csv is one column longer than valence.csv (the longest song has one more label).
    longest = max(songs, key=lambda s: songs[s]["n_arousal"])
    songs[longest]["n_arousal"] += 1
    by_id = {r.rater_id: r for r in pool}
    for song_id, song in songs.items():
        curves = [
            rate_song(
                by_id[r],
                song["arousal"],
                song["valence"],
                song["n_arousal"],
                song["n_valence"],
                np.random.default_rng([seed, int(song_id), 1, k]),
                song.get("cues"),
            )
            for k, r in enumerate(song["raters"])
        ]
        song["flat"] = [flat for _, _, flat in curves]
        annotations.append(
            {
                "id": int(song_id),
                "rater_ids": song["raters"],
                "rater_arousal": [a for a, _, _ in curves],
                "rater_valence": [v for _, v, _ in curves],
                "arousal_mean": np.mean([a for a, _, _ in curves], axis=0),
                "valence_mean": np.mean([v for _, v, _ in curves], axis=0),
            }
        )
    truth = {
        "format": TRUTH_FORMAT,
        "generator": "dsaml-synth",
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "layout": layout,
        "config": cfg.to_dict(),
        "curve_rate_hz": CURVE_RATE_HZ,
        "label_start_index": LABEL_START_INDEX,
        "audio_dir": str(audio_rel),
        "annotations_dir": str(deam_tree.annotations_dir(Path("."), layout)),
        "songs": songs,
        "raters": {r.rater_id: r.to_dict() for r in pool},
    }
    return truth, annotations


def _render_to_file(
    path: str, arousal, valence, n_samples, sample_rate, channels, seed, level, mode, cues=None
) -> int:
    """Render one song (cue curves `cues` or None) and write it in the container of its file name (.mp3
    with the MP3 settings, or .flac: 16-bit PCM); returns the number of samples written."""
    audio = render_music(
        np.asarray(arousal), np.asarray(valence), n_samples, sample_rate, channels, seed, cues
    )
    data = audio if channels == 2 else audio[:, 0]
    if path.endswith(".flac"):
        sf.write(path, data, sample_rate, format="FLAC", subtype="PCM_16")
    else:
        sf.write(path, data, sample_rate, format="MP3", compression_level=level, bitrate_mode=mode)
    return len(audio)


def _render_all(root: Path, truth: dict, workers: int, progress: bool, console: Console) -> None:
    cfg = truth["config"]
    jobs = sorted(truth["songs"].items(), key=lambda kv: -kv[1]["n_samples"] / kv[1]["sample_rate"])
    (root / truth["audio_dir"]).mkdir(parents=True, exist_ok=True)
    args = [
        (
            str(root / s["audio"]),
            s["arousal"],
            s["valence"],
            s["n_samples"],
            s["sample_rate"],
            s["channels"],
            s["audio_seed"],
            cfg["mp3_compression_level"],
            cfg["mp3_bitrate_mode"],
            s.get("cues"),
        )
        for _, s in jobs
    ]
    with progress_bar(console, progress) as bar:
        task = bar.add_task(f"[bold]rendering {cfg['audio_format'].upper()}", total=len(args), digits=2)
        if workers == 1:
            for a in args:
                _render_to_file(*a)
                bar.advance(task)
            return
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            for future in as_completed([pool.submit(_render_to_file, *a) for a in args]):
                future.result()
                bar.advance(task)


def _prepare_root(root: Path, truth: dict) -> tuple[bool, str]:
    """Make `root` ready: (True, "") when it already holds this exact corpus (nothing to do), else
    (False, what was replaced). Refuses a non-empty directory that is not a dsaml-synth corpus; a different
    or interrupted dsaml-synth corpus is regenerable output and is replaced (only the files it wrote)."""
    if not root.exists() or not any(root.iterdir()):
        return False, ""
    truth_path = root / TRUTH_FILE
    if not (truth_path.is_file() or (root / INCOMPLETE_MARK).is_file()):
        raise FileExistsError(
            f"{root} is not empty and is not a dsaml-synth corpus (no {TRUTH_FILE}); "
            "choose an empty or new `out`"
        )
    replaced = "an interrupted dsaml-synth run"
    if not (root / INCOMPLETE_MARK).exists():
        old = json.loads(truth_path.read_text())
        # keys added later (lens raters, the audio container) take the values older corpora were written with
        old["config"] = {**LENS_DEFAULTS, "audio_format": "mp3", **old.get("config", {})}
        keys = ("generator_version", "seed", "layout", "config")
        if {k: old.get(k) for k in keys} == {k: truth[k] for k in keys}:
            return True, ""
        replaced = (
            f"a different dsaml-synth corpus (preset {old.get('config', {}).get('name')!r}, "
            f"seed {old.get('seed')}, layout {old.get('layout')!r})"
        )
    for layout in ("nested", "flat"):
        for path in deam_tree.layout_roots(root, layout):
            if path.exists():
                shutil.rmtree(path)
    truth_path.unlink(missing_ok=True)
    return False, replaced


def _to_json(truth: dict) -> str:
    def convert(x):
        if isinstance(x, np.ndarray):
            return [round(float(v), 6) for v in x]
        raise TypeError(f"cannot serialise {type(x)}")

    return json.dumps(truth, default=convert, separators=(",", ":"))


def load_truth(root: str | os.PathLike) -> dict:
    """The ground truth of a generated corpus (see the module docstring), curves as float64 arrays."""
    path = Path(root) / TRUTH_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {root} is not a (complete) dsaml-synth corpus")
    truth = json.loads(path.read_text())
    if truth.get("format") != TRUTH_FORMAT:
        raise ValueError(f"{path}: truth format {truth.get('format')!r}, expected {TRUTH_FORMAT}")
    for song in truth["songs"].values():
        song["arousal"], song["valence"] = np.asarray(song["arousal"]), np.asarray(song["valence"])
        if "cues" in song:
            song["cues"] = {name: np.asarray(curve) for name, curve in song["cues"].items()}
    return truth


def summarize(root: Path, truth: dict, seconds: float = 0.0, reused: bool = False) -> CorpusSummary:
    """CorpusSummary of a corpus from its truth and its per-rater files (the PDMER rater count)."""
    songs = truth["songs"]
    ann = root / truth["annotations_dir"] / deam_tree.PER_RATER / deam_tree.DYNAMIC
    kept: Counter[str] = Counter()
    for song_id in songs:
        if 1001 <= int(song_id) <= 2000:
            curves = {
                d: np.loadtxt(ann / d / f"{song_id}.csv", delimiter=",", skiprows=1, dtype=str, ndmin=2)
                for d in ("arousal", "valence")
            }
            for row_a, row_v in zip(curves["arousal"], curves["valence"], strict=True):
                if not (is_flat(row_a[1:].astype(float)) or is_flat(row_v[1:].astype(float))):
                    kept[row_a[0]] += 1
    durations = {k: [s["duration_s"] for s in songs.values() if s["kind"] == k] for k in ("clip", "full")}
    span = lambda d: (min(d), max(d)) if d else None
    ids = sorted(int(i) for i in songs)
    return CorpusSummary(
        root=str(root),
        layout=truth["layout"],
        preset=truth["config"]["name"],
        seed=truth["seed"],
        n_songs=len(songs),
        n_clips=len(durations["clip"]),
        n_full_songs=len(durations["full"]),
        song_ids=(ids[0], ids[-1]),
        n_raters=len({r for s in songs.values() for r in s["raters"]}),
        n_pdmer_raters=sum(n >= PDMER_MIN_SONGS for n in kept.values()),
        clip_seconds=span(durations["clip"]),
        full_song_seconds=span(durations["full"]),
        sample_rates=dict(Counter(s["sample_rate"] for s in songs.values())),
        channels=dict(Counter(s["channels"] for s in songs.values())),
        truth_path=str(root / TRUTH_FILE),
        seconds=seconds,
        reused=reused,
    )


def generate_corpus(
    root: str | os.PathLike,
    config: str | SynthConfig | dict = "tiny",
    seed: int = 0,
    *,
    layout: str = "nested",
    workers: int | None = None,
    progress: bool = True,
    console: Console | None = None,
) -> CorpusSummary:
    """Generate (or reuse, when identical) a synthetic DEAM-format corpus under `root`.

    A different or interrupted dsaml-synth corpus in `root` is replaced (summary.replaced says what it was);
    a non-empty `root` that is not a dsaml-synth corpus raises FileExistsError and is left untouched.

    config: a preset name ("tiny", "demo", ... from conf/synth/), a SynthConfig or a dict of its fields.
    layout: "nested" (DEAM_Annotations/annotations, DEAM_audio/MEMD_audio) or "flat".
    workers: rendering processes (default None: one per CPU core, at most one per song); 1 renders in
    this process.
    Returns a CorpusSummary; the ground truth is `root/synth_truth.json` (see `load_truth`).
    """
    start = time.perf_counter()
    if isinstance(config, str):
        cfg = load_preset(config)
    elif isinstance(config, SynthConfig):
        cfg = config
    elif isinstance(config, dict):
        cfg = SynthConfig.from_mapping(config)
    else:
        raise ConfigError(f"config must be a preset name, SynthConfig or dict, got {type(config).__name__}")
    SynthRun(seed=seed, layout=layout, workers=workers)
    root = Path(root).expanduser().resolve()
    truth, annotations = plan_corpus(cfg, seed, layout)
    workers = min(os.cpu_count() or 1, len(truth["songs"])) if workers is None else workers
    reuse, replaced = _prepare_root(root, truth)
    if reuse:
        return summarize(root, load_truth(root), reused=True)
    root.mkdir(parents=True, exist_ok=True)
    (root / INCOMPLETE_MARK).write_text("dsaml-synth is writing this corpus\n")
    console = console or Console(stderr=True)
    _render_all(root, truth, workers, progress, console)
    deam_tree.write_annotations(root, layout, annotations)
    (root / TRUTH_FILE).write_text(_to_json(truth))
    (root / INCOMPLETE_MARK).unlink()
    summary = summarize(root, truth, seconds=time.perf_counter() - start)
    summary.replaced = replaced
    return summary
