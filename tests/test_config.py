"""The one config mechanism (`dsaml.config`): field checks from metadata, from_mapping, one ConfigError."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from omegaconf import OmegaConf

from dsaml.config import (
    Config,
    ConfigError,
    check_keys,
    choice,
    flag,
    integer,
    integer_pair,
    number,
    text,
)
from dsaml.data.readers import DataConfig
from dsaml.data.synth import SynthConfig
from dsaml.models import DSAMLConfig
from dsaml.training.config import TaskConfig


@dataclass
class Example(Config):
    SECTION = "example"

    name: str = text()
    device: str = choice("cpu", ("cpu", "gpu"))
    steps: int = integer(10, low=1)
    workers: int = integer(0, low=0)
    lr: float = number(5e-3, low=0, low_open=True)
    share: float = number(0.5, low=0.0, high=1.0, high_open=True)
    limit: int | None = integer(None, low=1, high=9, optional=True)
    plot: bool = flag(True)
    raters: list[int] = integer_pair([2, 3], low=1)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.raters[0] > self.raters[1]:
            raise ConfigError(f"example.raters={self.raters}: expected min <= max")


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"device": "tpu"}, "example.device='tpu' is not one of cpu, gpu"),
        ({"steps": 0}, "example.steps=0: expected an integer >= 1"),
        ({"steps": 2.5}, "example.steps=2.5: expected an integer >= 1"),
        ({"steps": True}, "example.steps=True: expected an integer >= 1"),
        ({"workers": -1}, "example.workers=-1: expected a non-negative integer"),
        ({"lr": 0}, "example.lr=0: expected a positive number"),
        ({"share": 1.0}, r"example.share=1.0: expected a number in [0.0, 1.0)"),
        ({"limit": 10}, "example.limit=10: expected an integer in 1..9 or null"),
        ({"plot": "yes"}, "example.plot='yes': expected true or false"),
        ({"name": ""}, "example.name='': expected a non-empty string"),
        ({"raters": [0, 3]}, "example.raters[0]=0: expected an integer >= 1"),
        ({"raters": [3]}, "example.raters=[3]: expected [min, max]"),
        ({"raters": [3, 2]}, "example.raters=[3, 2]: expected min <= max"),  # the cross-field rule
    ],
)
def test_field_checks_name_the_key_the_value_and_what_is_allowed(values, message):
    with pytest.raises(ConfigError) as error:
        Example.from_mapping({"name": "x", **values})
    assert str(error.value) == message


def test_from_mapping_rejects_unknown_and_missing_keys_and_reads_omegaconf():
    with pytest.raises(ConfigError) as error:
        Example.from_mapping({"name": "x", "step": 3, "colour": 1})
    allowed = "['name', 'device', 'steps', 'workers', 'lr', 'share', 'limit', 'plot', 'raters']"
    assert str(error.value) == f"example: unknown key(s) ['colour', 'step']; allowed keys: {allowed}"
    with pytest.raises(ConfigError, match=r"^dsaml-x: missing key\(s\) \['name'\]$"):
        Example.from_mapping({"steps": 3}, "dsaml-x")
    built = Example.from_mapping(OmegaConf.create({"name": "x", "limit": "${steps}", "steps": 4}))
    assert (built.limit, built.steps, built.raters) == (4, 4, [2, 3])
    assert built.to_dict()["raters"] == [2, 3] and Example(name="y").raters is not built.raters
    with pytest.raises(ConfigError, match=r"^dsaml-x: unknown key\(s\) \['z'\]; allowed keys: \['a', 'b'\]$"):
        check_keys("dsaml-x", ["a", "z"], ["a", "b"])


def test_every_config_group_uses_the_mechanism():
    """One error type and one message format across the groups (a ValueError, for callers that catch it)."""
    cases = [
        (lambda: DSAMLConfig.from_dict({"attention": "both"}), "model.attention='both' is not one of dual,"),
        (
            lambda: TaskConfig.from_dict({"name": "pdmer", "shots": 0}),
            "task.shots=0: expected an integer >= 1",
        ),
        (lambda: TaskConfig.from_dict({"shot": 1}), "task: unknown key(s) ['shot']"),
        (
            lambda: DataConfig.from_mapping({"name": "d", "root": "/r", "split": {"method": "x"}}),
            "data.split.method=",
        ),
        (
            lambda: DataConfig.from_mapping({"name": "d", "root": "/r", "features": {"n_mels": 0}}),
            "features.n_mels=0",
        ),
        (lambda: SynthConfig.from_mapping({"name": "s"}), "synth: missing key(s) ['n_songs_2013',"),
    ]
    for build, message in cases:
        with pytest.raises(ConfigError) as error:
            build()
        assert isinstance(error.value, ValueError) and str(error.value).startswith(message), str(error.value)


def test_folders_and_top_level_keys_are_declared_fields(tmp_path):
    """existing_folder / folder_list check the paths; a command's top-level keys are its job class's fields,
    the groups left to their own classes and the other keys checked as declared."""
    from dsaml.cli.report import ReportConfig
    from dsaml.training.config import EvalJob, TrainJob

    ok = ReportConfig.from_mapping({"runs": [str(tmp_path)], "out": "o", "corpus": str(tmp_path)})
    assert ok.runs == [str(tmp_path)] and ok.corpus == str(tmp_path) and ok.overwrite is False
    for values, message in [
        ({"runs": []}, "runs=[]: expected a list of at least 1 existing folders"),
        ({"runs": [str(tmp_path / "no")]}, f"runs[0]={str(tmp_path / 'no')!r} is not a folder"),
        ({"runs": [str(tmp_path)], "corpus": "nope"}, "corpus='nope' is not a folder"),
        ({"runs": [str(tmp_path)], "overwrite": "yes"}, "overwrite='yes': expected true or false"),
    ]:
        with pytest.raises(ConfigError) as error:
            ReportConfig.from_mapping({"out": "o", **values})
        assert str(error.value) == message
    job = OmegaConf.create(
        {"data": {"any": 1}, "task": "x", "seed": 3, "protocols": ["dmer"], "overrides": {}}
    )
    EvalJob.check_top_level(job, "dsaml-eval")  # groups unchecked here
    with pytest.raises(ConfigError, match=r"^dsaml-eval: unknown key\(s\) \['init_from'\]; allowed keys"):
        EvalJob.check_top_level(OmegaConf.create({"init_from": None}), "dsaml-eval")
    with pytest.raises(ConfigError, match=r"^num_workers=-1: expected a non-negative integer$"):
        TrainJob.check_top_level(OmegaConf.create({"model": {}, "num_workers": -1}), "dsaml-train")
    with pytest.raises(ConfigError, match=r"^test='no': expected true or false$"):
        TrainJob.check_top_level(OmegaConf.create({"test": "no", "tags": ["a"]}), "dsaml-train")
    assert set(EvalJob.allowed_keys()) - set(TrainJob.allowed_keys()) == {"protocols", "overrides"}
