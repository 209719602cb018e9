"""dsaml.progress: the rate column (items per wall second, real-time factor) and the song-event bar."""

from __future__ import annotations

from rich.console import Console
from rich.progress import Progress

from dsaml.progress import RateColumn, progress_bar, song_events


def test_rate_column_is_completed_over_elapsed_with_the_real_time_factor() -> None:
    clock = [0.0]
    progress = Progress(get_time=lambda: clock[0])
    songs = progress.add_task("songs", total=10, audio=0.0)
    windows = progress.add_task("windows", unit="windows", digits=0)
    column = RateColumn()
    assert column.render(progress.tasks[songs]).plain == "-- songs/s --x real-time"
    assert column.render(progress.tasks[windows]).plain == "-- windows/s"
    clock[0] = 4.0
    progress.update(songs, advance=2, audio=120.0)  # 2 songs, 120 s of audio in 4 s
    progress.update(windows, completed=48)
    assert column.render(progress.tasks[songs]).plain == "0.5 songs/s 30x real-time"
    assert column.render(progress.tasks[windows]).plain == "12 windows/s"


def test_song_events_open_the_bar_on_start_and_add_up_audio() -> None:
    with progress_bar(Console(file=None, quiet=True), enabled=False) as progress:
        on_progress = song_events(progress, "songs")
        on_progress("start", {"todo": 3, "resumed": 2})
        on_progress("song", {"duration_s": 45.0})
        on_progress("song", {"duration_s": 30.5})
        (task,) = progress.tasks
    assert task.description == "songs (+2 resumed)"
    assert (task.total, task.completed, task.fields["audio"]) == (3, 2, 75.5)
