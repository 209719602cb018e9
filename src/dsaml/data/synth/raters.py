"""Synthetic raters: a pool of persistent annotators, each reporting a personal transformation of the truth.

A rater's reported curve for one dimension is
    r[i] = clip(gain * truth[LABEL_START_INDEX + i - lag] + offset + noise[i], -1, 1)
with `lag` in 2 Hz steps (the rater reacts late) and `noise` a smooth AR(1) process (coefficient
NOISE_AR) of standard deviation `noise`. Kinds: "typical" raters scatter mildly around gain 1, offset 0;
idiosyncratic ones read valence inverted ("valence_inverted"), barely move the arousal slider
("arousal_damped") or sit far from the others ("biased"). A rating can be "flat" (slider never moved):
then both curves are one constant value.

Those kinds report a transformation of one shared perception: the song's (mean listener's) curve. A "lens"
rater (Brunswik's lens model, docs/listeners.md) perceives its own mix of the song's cue curves instead:
    perceived_arousal = sum_c w_c * cue_c over AROUSAL_CUES, perceived_valence likewise over VALENCE_CUES,
with weights w drawn per rater from a symmetric Dirichlet (concentration < 1: most raters lean on one or two
cues), then reports it through the typical rater's transform (gain, offset, lag, noise) as above.
"""

from __future__ import annotations

import string
from dataclasses import asdict, dataclass

import numpy as np

from dsaml.data.synth.curves import LABEL_START_INDEX
from dsaml.data.synth.music import AROUSAL_CUES, VALENCE_CUES

NOISE_AR = 0.85
MAX_LAG = 4
IDIOSYNCRATIC_KINDS = ("valence_inverted", "arousal_damped", "biased")
LENS = "lens"
CUES = {"arousal": AROUSAL_CUES, "valence": VALENCE_CUES}


@dataclass(frozen=True)
class Transform:
    """How one rater reports one dimension: gain, offset, lag (2 Hz steps, >= 0), noise std."""

    gain: float
    offset: float
    lag: int
    noise: float

    def apply(self, truth: np.ndarray, n_labels: int, rng: np.random.Generator) -> np.ndarray:
        """Reported curve [n_labels] from the true curve `truth` (from t = 0)."""
        idx = LABEL_START_INDEX + np.arange(n_labels) - self.lag
        return np.clip(self.gain * truth[idx] + self.offset + smooth_noise(n_labels, self.noise, rng), -1, 1)


@dataclass(frozen=True)
class Rater:
    rater_id: str
    kind: str
    activity: float  # relative chance of being picked for a song
    flat_probability: float  # chance that one rating is an unmoved slider
    arousal: Transform
    valence: Transform
    # lens raters: {"arousal": {cue: weight}, "valence": {cue: weight}} (each sums to 1); None otherwise
    cue_weights: dict[str, dict[str, float]] | None = None

    def to_dict(self) -> dict:
        out = asdict(self)
        if self.cue_weights is None:
            del out["cue_weights"]
        return out

    def perceive(self, arousal: np.ndarray, valence: np.ndarray, cues: dict[str, np.ndarray] | None):
        """(arousal, valence) this rater perceives: the song's curves, or for a lens rater its weighted mix
        of the song's cue curves `cues` ({name: [K] curve from t = 0})."""
        if self.cue_weights is None:
            return arousal, valence
        if cues is None:
            raise ValueError(f"rater {self.rater_id} is a lens rater but the song has no cue curves")
        return tuple(
            sum(w * np.asarray(cues[name]) for name, w in self.cue_weights[dim].items()) for dim in CUES
        )


def smooth_noise(n: int, std: float, rng: np.random.Generator) -> np.ndarray:
    """AR(1) noise [n] with coefficient NOISE_AR and stationary standard deviation `std`."""
    shocks = rng.standard_normal(n) * std * np.sqrt(1 - NOISE_AR**2)
    out = np.empty(n)
    state = rng.standard_normal() * std
    for i in range(n):
        state = NOISE_AR * state + shocks[i]
        out[i] = state
    return out


def worker_id(rng: np.random.Generator) -> str:
    """A Mechanical-Turk-like WorkerId: 'A' + 13 upper-case letters/digits."""
    alphabet = np.array(list(string.ascii_uppercase + string.digits))
    return "A" + "".join(rng.choice(alphabet, size=13))


def _typical(rng: np.random.Generator) -> Transform:
    return Transform(
        gain=float(rng.uniform(0.75, 1.15)),
        offset=float(rng.normal(0.0, 0.08)),
        lag=int(rng.integers(0, MAX_LAG + 1)),
        noise=float(rng.uniform(0.03, 0.08)),
    )


def make_rater(
    kind: str,
    rng: np.random.Generator,
    activity_spread: float,
    flat_probability: float,
    lens_concentration: float = 0.5,
) -> Rater:
    """One rater of the given kind ("typical", "lens" or one of IDIOSYNCRATIC_KINDS) with a fresh WorkerId;
    a lens rater's cue weights per dimension ~ Dirichlet(lens_concentration, ...)."""
    arousal, valence = _typical(rng), _typical(rng)
    weights = None
    if kind == LENS:
        weights = {
            dim: dict(zip(names, rng.dirichlet([lens_concentration] * len(names)).tolist(), strict=True))
            for dim, names in CUES.items()
        }
    elif kind == "valence_inverted":
        valence = Transform(-float(rng.uniform(0.6, 1.0)), valence.offset, valence.lag, valence.noise)
    elif kind == "arousal_damped":
        arousal = Transform(float(rng.uniform(0.1, 0.3)), arousal.offset, arousal.lag, arousal.noise)
    elif kind == "biased":
        sign = rng.choice([-1.0, 1.0], size=2)
        arousal = Transform(arousal.gain, float(sign[0] * rng.uniform(0.3, 0.5)), arousal.lag, arousal.noise)
        valence = Transform(valence.gain, float(sign[1] * rng.uniform(0.3, 0.5)), valence.lag, valence.noise)
    elif kind != "typical":
        raise ValueError(
            f"unknown rater kind {kind!r}; expected 'typical', {LENS!r} or one of {IDIOSYNCRATIC_KINDS}"
        )
    return Rater(
        rater_id=worker_id(rng),
        kind=kind,
        activity=float(rng.lognormal(0.0, activity_spread)),
        flat_probability=flat_probability,
        arousal=arousal,
        valence=valence,
        cue_weights=weights,
    )


def make_pool(
    n_raters: int,
    idiosyncratic_fraction: float,
    activity_spread: float,
    flat_probability: float,
    rng: np.random.Generator,
    lens_fraction: float = 0.0,
    lens_concentration: float = 0.5,
) -> list[Rater]:
    """`n_raters` raters with distinct ids; round(fraction * n) of them idiosyncratic (kinds cycled),
    round(lens_fraction * n) lens raters, the rest typical."""
    n_odd = int(round(idiosyncratic_fraction * n_raters))
    n_lens = int(round(lens_fraction * n_raters))
    kinds = [IDIOSYNCRATIC_KINDS[i % len(IDIOSYNCRATIC_KINDS)] for i in range(n_odd)]
    kinds += [LENS] * n_lens + ["typical"] * (n_raters - n_odd - n_lens)
    kinds = [kinds[i] for i in rng.permutation(n_raters)]
    pool: list[Rater] = []
    seen: set[str] = set()
    for kind in kinds:
        rater = make_rater(kind, rng, activity_spread, flat_probability, lens_concentration)
        while rater.rater_id in seen:
            rater = make_rater(kind, rng, activity_spread, flat_probability, lens_concentration)
        seen.add(rater.rater_id)
        pool.append(rater)
    return pool


def pick_raters(pool: list[Rater], count: int, rng: np.random.Generator) -> list[int]:
    """Indices of `count` distinct raters drawn in proportion to activity (Gumbel top-k), in pool order."""
    count = min(count, len(pool))
    keys = np.log([r.activity for r in pool]) + rng.gumbel(size=len(pool))
    return sorted(np.argsort(-keys)[:count].tolist())


def rate_song(
    rater: Rater,
    arousal: np.ndarray,
    valence: np.ndarray,
    n_arousal: int,
    n_valence: int,
    rng: np.random.Generator,
    cues: dict[str, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray, bool]:
    """One rater's (arousal [n_arousal], valence [n_valence], flat) for a song with true curves (t=0 on)
    and, in a lens corpus, cue curves `cues` (see `Rater.perceive`)."""
    if rng.uniform() < rater.flat_probability:
        level = np.clip(rng.normal(0.0, 0.2, size=2), -1, 1)
        return np.full(n_arousal, level[0]), np.full(n_valence, level[1]), True
    arousal, valence = rater.perceive(arousal, valence, cues)
    return rater.arousal.apply(arousal, n_arousal, rng), rater.valence.apply(valence, n_valence, rng), False
