"""The `data` config group (conf/data/*.yaml) validated, and the dispatch to the dataset readers."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dsaml.config import Config, ConfigError, check_choice, choice, flag, integer, text
from dsaml.data.catalogue import STORE_MODES, Catalogue
from dsaml.data.deam import read_deam
from dsaml.data.features import FeatureConfig
from dsaml.data.pmemo import FRAME_TIMES, read_pmemo
from dsaml.data.rules import PdmerFilter, SplitRule

READERS = ("deam", "pmemo")
LAYOUTS = ("auto", "nested", "flat")


@dataclass(frozen=True)
class DataConfig(Config):
    """One dataset: where it is, how to read and split it, and its feature settings."""

    SECTION = "data"

    name: str = text()
    root: str = text()
    reader: str = choice("deam", READERS)
    layout: str = choice("auto", LAYOUTS)  # DEAM only: auto | nested | flat
    frame_time: str = choice("auto", FRAME_TIMES)  # PMEmo only: auto | start | end
    segments_per_clip: int = integer(60, low=1)
    store_as: Mapping[str, str] = field(default_factory=lambda: {"train": "clip", "test": "song"})
    features: FeatureConfig = field(default_factory=FeatureConfig)
    split: SplitRule = field(default_factory=SplitRule)
    pdmer: PdmerFilter = field(default_factory=PdmerFilter)
    strict: bool = flag(False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if set(self.store_as) != {"train", "test"}:
            raise ConfigError(
                f"data.store_as={dict(self.store_as)}: expected exactly the keys ['train', 'test']"
            )
        for split, mode in self.store_as.items():
            check_choice(f"data.store_as.{split}", mode, STORE_MODES)

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any] | None, where: str | None = None) -> DataConfig:
        """The `data` group, its nested groups (features, split, pdmer) validated too."""
        values = dict(mapping or {})
        if values.get("root") in (None, ""):
            raise ConfigError("data.root is not set: pass data.root=/path/to/dataset")
        values["root"] = str(values["root"])
        values["features"] = FeatureConfig.from_mapping(values.get("features"))
        values["split"] = SplitRule.from_mapping(values.get("split"))
        values["pdmer"] = PdmerFilter.from_mapping(values.get("pdmer"))
        if "store_as" in values:
            values["store_as"] = dict(values["store_as"])
        return super().from_mapping(values, where)


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
