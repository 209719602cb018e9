"""Every `dsaml-*` command line in README.md composes: its config groups, keys and values exist (Hydra's
strict composition), and training commands pass dsaml-train's validation. What the commands *do* is
tested in the area's own tests and by `make demo`; this keeps the README from drifting away from conf/."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from dsaml.config import CONFIG_DIR
from dsaml.training.config import validate_train_config

README = Path(__file__).resolve().parents[1] / "README.md"
CONFIGS = {  # console script -> its conf/<name>.yaml
    "dsaml-synth": "synth",
    "dsaml-preprocess": "preprocess",
    "dsaml-train": "train",
    "dsaml-eval": "eval",
    "dsaml-predict": "predict",
    "dsaml-personalize": "personalize",
    "dsaml-demo": "demo",
}


def readme_commands() -> list[str]:
    """Command lines in the README's bash blocks (continuation lines joined, comments dropped)."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    lines = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].split(" # ")[0].strip()
            if line.startswith("dsaml-"):
                lines.append(line)
    return lines


COMMANDS = readme_commands()


def test_the_readme_shows_every_command():
    assert {line.split()[0] for line in COMMANDS} >= set(CONFIGS) | {"dsaml-convert"}


@pytest.mark.parametrize("line", [c for c in COMMANDS if c.split()[0] in CONFIGS])
def test_readme_command_composes(line):
    words = shlex.split(line)
    sweep = "-m" in words
    # a sweep composes once per job: check its first job (key=a,b,c -> key=a)
    overrides = [first_job(w) if sweep else w for w in words[1:] if w != "-m"]
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(CONFIGS[words[0]], overrides=overrides, return_hydra_config=sweep)
    if words[0] == "dsaml-train":
        validate_train_config(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), need_store=False)


def first_job(override: str) -> str:
    key, _, value = override.partition("=")
    return f"{key}={value.split(',')[0]}" if "," in value and "[" not in value else override
