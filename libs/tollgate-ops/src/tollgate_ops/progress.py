"""Progress bars for long work, on stderr so that stdout stays the report (and ``--json`` stays parseable).

rich draws them only on a terminal; in a Job's log or a pipe they stay silent and the report is all there is.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

__all__ = ["Bars", "Step"]

#: Called with how many more items are done.
Step = Callable[[int], None]


class Bars:
    """One rich ``Progress`` for a command; :meth:`task` adds a bar and returns its step function."""

    def __init__(self, enabled: bool = True) -> None:
        self.console = Console(stderr=True)
        self.enabled = enabled and self.console.is_terminal
        self._progress = Progress(
            TextColumn("{task.description:<28}"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
            TimeElapsedColumn(), TimeRemainingColumn(), console=self.console, transient=False,
            disable=not self.enabled,
        )

    @contextmanager
    def running(self) -> Iterator[Bars]:
        with self._progress:
            yield self

    def task(self, description: str, total: int | None) -> Step:
        task_id = self._progress.add_task(description, total=total)

        def step(n: int) -> None:
            self._progress.advance(task_id, n)

        return step

    def note(self, message: str) -> None:
        """A line for the operator (stderr), e.g. what is being read; silent off a terminal like the bars."""
        if self.enabled:
            self._progress.console.print(message)
