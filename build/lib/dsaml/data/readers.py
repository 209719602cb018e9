"""The `data` config group (conf/data/*.yaml) validated, and the dispatch to the dataset readers."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dsaml.data.catalogue import STORE_MODES, Catalogue, PdmerFilter, SplitRule
from dsaml.data.deam import read_deam
from dsaml.data.features import FeatureConfig
from dsaml.data.pmemo import FRAME_TIMES, read_pmemo
from dsaml.data.validation import ConfigError, check_choice, check_positive, from_mapping

READERS = ("deam", "pmemo")
LAYOUTS = ("auto", "nested", "flat")


@dataclass(frozen=True)
class DataConfig:
    """One dataset: where it is, how to read and split it, and its feature settings."""

    name: str
    root: str
    reader: str = "deam"
    layout: str = "auto"  # DEAM only: auto | nested | flat
    frame_time: str = "auto"  # PMEmo only: auto | start | end
    segments_per_clip: int = 60
    store_as: Mapping[str, str] = field(default_factory=lambda: {"train": "clip", "test": "song"})
    features: FeatureConfig = field(default_factory=FeatureConfig)
    split: SplitRule = field(default_factory=SplitRule)
    pdmer: PdmerFilter = field(default_factory=PdmerFilter)
    strict: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"data.name={self.name!r}: expected a non-empty string")
        check_choice("data.reader", self.reader, READERS)
        check_choice("data.layout", self.layout, LAYOUTS)
        check_choice("data.frame_time", self.frame_time, FRAME_TIMES)
        check_positive("data.segments_per_clip", self.segments_per_clip, integer=True)
        if set(self.store_as) != {"train", "test"}:
            raise ConfigError(
                f"data.store_as={dict(self.store_as)}: expected exactly the keys ['train', 'test']"
            )
        for split, mode in self.store_as.items():
            check_choice(f"data.store_as.{split}", mode, STORE_MODES)
        if not isinstance(self.strict, bool):
            raise ConfigError(f"data.strict={self.strict!r}: expected true or false")

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any]) -> DataConfig:
        values = dict(mapping)
        if values.get("root") in (None, ""):
            raise ConfigError("data.root is not set: pass data.root=/path/to/dataset")
        values["root"] = str(values["root"])
        values["features"] = FeatureConfig.from_mapping(values.get("features"))
        values["split"] = from_mapping(SplitRule, values.get("split"), "data.split")
        values["pdmer"] = from_mapping(PdmerFilter, values.get("pdmer"), "data.pdmer")
        if "store_as" in values:
            values["store_as"] = dict(values["store_as"])
        return from_mapping(cls, values, "data")

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "root": self.root,
            "reader": self.reader,
            "layout": self.layout,
            "frame_time": self.frame_time,
            "segments_per_clip": self.segments_per_clip,
            "store_as": dict(self.store_as),
            "features": self.features.to_dict(),
            "split": vars(self.split).copy(),
            "pdmer": vars(self.pdmer).copy(),
            "strict": self.strict,
        }


def read_catalogue(config: DataConfig) -> Catalogue:
    """Read the dataset named by `config` and apply its PDMER filters."""
    start_ms = round(config.features.start_s * 1000)
    root = Path(config.root).expanduser().resolve()  # stored paths are absolute
    common = dict(
        name=config.name,
        start_ms=start_ms,
        split=config.split,
        store_as=dict(config.store_as),
        strict=config.strict,
    )
    if config.reader == "deam":
        catalogue = read_deam(root, layout=config.layout, **common)
    else:
        catalogue = read_pmemo(root, frame_time=config.frame_time, **common)
    if catalogue.per_rater:
        catalogue.pdmer_pairs = config.pdmer.select(catalogue)
    return catalogue
