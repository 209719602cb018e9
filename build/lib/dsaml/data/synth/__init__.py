"""dsaml-synth: a deterministic synthetic corpus in DEAM's on-disk format with a learnable emotion signal.

    from dsaml.data.synth import generate_corpus, load_truth
    summary = generate_corpus(tmp_path / "deam", "tiny", seed=0)   # a few seconds
    truth = load_truth(tmp_path / "deam")                          # true curves, rater parameters

Modules: `curves` (true arousal/valence), `raters` (rater pool and transforms), `music` (audio rendering),
`deam_tree` (DEAM file formats and layouts), `corpus` (planning, rendering, truth), `config` (presets).
"""

from dsaml.data.synth.config import SynthConfig, SynthConfigError, load_preset, preset_names
from dsaml.data.synth.corpus import TRUTH_FILE, CorpusSummary, generate_corpus, is_flat, load_truth

__all__ = [
    "TRUTH_FILE",
    "CorpusSummary",
    "SynthConfig",
    "SynthConfigError",
    "generate_corpus",
    "is_flat",
    "load_preset",
    "load_truth",
    "preset_names",
]
