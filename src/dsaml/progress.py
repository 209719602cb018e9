"""Rich progress bars with rates, shared by the commands that work through many songs.

    with progress_bar(console) as progress:
        songs = progress.add_task("songs", total=n, audio=0.0)       # shows "1.2 songs/s 40x real-time"
        windows = progress.add_task("  windows", unit="windows", digits=0)

A task's optional fields: `unit` (what is counted, "songs" by default), `digits` (decimals of the rate, 1),
`audio` (seconds of audio processed so far: adds the real-time factor).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

STYLE = "progress.data.speed"


class RateColumn(ProgressColumn):
    """Items per second over the task's whole run (completed / elapsed), and with an `audio` field the
    real-time factor (audio seconds per wall second)."""

    def render(self, task: Task) -> Text:
        unit = task.fields.get("unit", "songs")
        elapsed = task.elapsed or 0.0
        if not elapsed or not task.completed:
            return Text(f"-- {unit}/s" + (" --x real-time" if "audio" in task.fields else ""), style=STYLE)
        rate = f"{task.completed / elapsed:.{task.fields.get('digits', 1)}f} {unit}/s"
        audio = task.fields.get("audio", 0.0)
        return Text(rate + (f" {audio / elapsed:.0f}x real-time" if audio else ""), style=STYLE)


def progress_bar(console: Console, enabled: bool = True) -> Progress:
    """A bar per task: description, bar, done/total, rate, time elapsed and remaining."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(bar_width=24),
        MofNCompleteColumn(),
        RateColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not enabled,
    )


def song_events(progress: Progress, label: str) -> Callable[[str, dict[str, Any]], None]:
    """`on_progress` for `preprocess` / `add_global_vectors`: a bar from ("start", {"todo", "resumed"}) on,
    advanced by each ("song", {"duration_s", ...})."""
    task_id = None

    def on_progress(event: str, info: dict[str, Any]) -> None:
        nonlocal task_id
        if event == "start":  # the catalogue is read: show the bar from here on
            resumed = f" (+{info['resumed']} resumed)" if info["resumed"] else ""
            task_id = progress.add_task(f"{label}{resumed}", total=info["todo"], audio=0.0)
        else:
            audio = progress.tasks[task_id].fields["audio"] + info.get("duration_s", 0.0)
            progress.update(task_id, advance=1, audio=audio)

    return on_progress
