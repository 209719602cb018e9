#!/usr/bin/env bash
# Refresh requirements/lock.txt on purpose (`make lock`): resolve pyproject.toml's dependencies and the
# dev, slurm and clap extras into a fresh, throw-away venv, check it, and write every package it holds
# (transitive ones and the build tools included) pinned to one exact version.
#
# The torch / torchaudio / torchvision trio is chosen here, by measurement (docs/development.md, "Installing"), and
# given to the resolver as exact pins; everything else is whatever the resolver picks today.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TRIO=(torch==2.14.1 torchaudio==2.11.1 torchvision==0.29.1)
BUILD=(pip wheel setuptools "cython>=3")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

"$PYTHON" -m venv "$work/venv"
py="$work/venv/bin/python"
"$py" -m pip install -q --upgrade "${BUILD[@]}"
"$py" -m pip install -q "${TRIO[@]}"
bash tools/install_learn2learn.sh "$py"
"$py" -m pip install -q ".[dev,slurm,clap]" "${TRIO[@]}"
rm -rf build  # what the non-editable install of . left behind
"$py" -m pip check
"$py" -c "import torch, torchaudio, torchvision, learn2learn, lightning, hydra, h5py, transformers"

{
  echo "# Every package of dsaml's venv, pinned exactly. Written by 'make lock' (tools/lock.sh) on $(date -u +%F)"
  echo "# with $("$py" --version) on $(uname -m); installed by 'make install' and nothing else."
  echo "# learn2learn is built from source by tools/install_learn2learn.sh (its sdist does not build on"
  echo "# Python >= 3.11 as published); every other line installs with 'pip install --no-deps'."
  "$py" -m pip freeze --all --exclude dsaml | sed 's|^learn2learn @ .*|learn2learn==0.2.0|' | LC_ALL=C sort -f
} > requirements/lock.txt
echo "wrote requirements/lock.txt ($(grep -vc '^#' requirements/lock.txt) packages)"
