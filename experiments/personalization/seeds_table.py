"""Merge lens_eval.py's per-seed tables (its `--out` markdown files, one per seed, same rows) into one table
per k: each row's mean over the seeds of each group's mean gain (the seeds' values of "all" in brackets),
the mean share of listeners not worse, and the worst listener over the seeds.

    python experiments/personalization/seeds_table.py seed_0.md seed_1.md seed_2.md
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np

from dsaml.reporting import markdown

HEADING = re.compile(r"^### k = (\d+)")


def read_tables(path: Path) -> dict[int, dict[str, list[str]]]:
    """{k: {row name: cells after the name}} of one lens_eval.py markdown file."""
    tables: dict[int, dict[str, list[str]]] = {}
    k = None
    for line in path.read_text().splitlines():
        if match := HEADING.match(line):
            k = int(match.group(1))
            tables[k] = {}
        elif k is not None and line.startswith("| ") and not line.startswith("| gain over"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            tables[k][cells[0]] = cells[1:]
    return tables


def gain(cell: str) -> float:
    """'+0.032 (28)' -> 0.032; '-' (an empty group) -> nan."""
    return float("nan") if cell == "-" else float(cell.split()[0])


def merged(per_seed: list[dict[str, list[str]]]) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of one k over the seeds (rows in the first seed's order)."""
    header = ["gain over the DMER model", "all: mean (seeds)", "output-map", "lens near", "lens far"]
    header += ["not worse", "worst"]
    rows = []
    for name in per_seed[0]:
        cells = [table[name] for table in per_seed]
        seeds = [gain(c[0]) for c in cells]
        row = [name, f"{np.mean(seeds):+.3f} ({' / '.join(f'{v:+.3f}' for v in seeds)})"]
        groups = [np.mean([gain(c[i]) for c in cells]) for i in (1, 2, 3)]
        row += ["-" if np.isnan(g) else f"{g:+.3f}" for g in groups]
        row.append(f"{np.mean([float(c[4].rstrip('%')) for c in cells]):.0f}%")
        row.append(f"{min(float(c[5]) for c in cells):+.3f}")
        rows.append(row)
    return header, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tables", nargs="+", type=Path, help="lens_eval.py --out files, one per seed")
    args = parser.parse_args()
    seeds = [read_tables(path) for path in args.tables]
    for k in seeds[0]:
        print(f"#### k = {k}\n\n{markdown(*merged([s[k] for s in seeds]))}\n")


if __name__ == "__main__":
    main()
