"""Every `dsaml-*` command line in README.md and docs/*.md composes: its config groups, keys and values exist
(Hydra's strict composition), and training commands pass dsaml-train's validation. What the commands *do* is
tested in the area's own tests and by `make demo`; this keeps the documentation from drifting away from
conf/."""

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

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
CONFIGS = {  # console script -> its conf/<name>.yaml
    "dsaml-synth": "synth",
    "dsaml-preprocess": "preprocess",
    "dsaml-train": "train",
    "dsaml-eval": "eval",
    "dsaml-predict": "predict",
    "dsaml-personalize": "personalize",
    "dsaml-demo": "demo",
    "dsaml-report": "report",
}


def doc_commands(path: Path) -> list[str]:
    """Command lines in a markdown file's bash blocks (continuation lines joined, comments dropped)."""
    blocks = re.findall(r"```bash\n(.*?)```", path.read_text(), flags=re.S)
    lines = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].split(" # ")[0].strip()
            if line.startswith("dsaml-"):
                lines.append(line)
    return lines


README_COMMANDS = doc_commands(README)
COMMANDS = [(p.relative_to(ROOT).as_posix(), line) for p in [README, *DOCS] for line in doc_commands(p)]
CONFIGURED = [(path, line) for path, line in COMMANDS if line.split()[0] in CONFIGS]


def test_the_readme_shows_every_command():
    assert {line.split()[0] for line in README_COMMANDS} >= set(CONFIGS) | {"dsaml-convert"}


def test_the_docs_have_commands_to_check():
    """The docs' bash blocks are found (a changed fence style would silently check nothing)."""
    files = {path for path, _ in COMMANDS}
    assert {"docs/tools.md", "docs/training.md", "docs/store.md", "docs/synth.md"} <= files


@pytest.mark.parametrize("path,line", CONFIGURED, ids=[f"{p}:{i}" for i, (p, _) in enumerate(CONFIGURED)])
def test_documented_command_composes(path, line):
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
