"""results.json / results.md of a test run.

results.json = {"rows": [{"protocol", "arousal_ccc", "arousal_pcc", "arousal_rmse", "valence_ccc",
"valence_pcc", "valence_rmse", "average", "n"}, ...], "per_rater": [{... , "rater"}, ...]}; protocol is one
of dmer, pdmer_unadapted, pdmer_within_song, pdmer_cross_song.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dsaml.metrics import REPORTED
from dsaml.outputs import write_text_atomic

COLUMNS = REPORTED + ("n",)


def markdown_table(rows: list[dict[str, Any]], first: str = "protocol") -> str:
    header = f"| {first} | " + " | ".join(COLUMNS) + " |"
    lines = [header, "|" + "---|" * (len(COLUMNS) + 1)]
    for row in rows:
        cells = [str(row["n"]) if key == "n" else f"{row[key]:.4f}" for key in COLUMNS]
        label = row[first] if first == "protocol" else f"{row['protocol']} / {row['rater']}"
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_results(results: dict[str, list[dict[str, Any]]], out_dir: str | Path, title: str = "") -> Path:
    """Write results.json and results.md into out_dir; returns the json path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    write_text_atomic(path, json.dumps(results, indent=2))
    text = [
        f"# Test results{f': {title}' if title else ''}",
        "",
        "Mean over sequences (songs, or song-rater pairs for PDMER); n = sequences.",
        "",
        markdown_table(results["rows"]),
    ]
    if results["per_rater"]:
        text += ["", "## Per rater", "", markdown_table(results["per_rater"], first="rater")]
    write_text_atomic(out / "results.md", "\n".join(text) + "\n")
    return path
