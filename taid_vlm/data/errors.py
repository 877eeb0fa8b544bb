"""Bad input: one error type that names where and how to fix, and the ``skip_bad`` policy.

Real instruction sets always contain a few broken rows (a missing image, a conversation cut
before the answer). Failing on the first one with a precise message is the default; with
``skip_bad=True`` the loader drops such rows and says how many it dropped, so a silent loss of
data can never hide behind a score.
"""

from __future__ import annotations

import warnings
from typing import Callable, Iterable, Iterator, TypeVar

from ..errors import UserError

T = TypeVar("T")


class DataError(UserError):
    """A record or file that cannot be used; the message says where and what to do."""

    def __init__(self, where: str, problem: str, fix: str = ""):
        self.where, self.problem, self.fix = where, problem, fix
        message = f"{where}: {problem}"
        if fix:
            message += f". Fix: {fix}"
        super().__init__(message)


class SkippedRecordsWarning(UserWarning):
    """Emitted once per source when ``skip_bad=True`` dropped records."""


class BadRecordCounter:
    """Collects the errors of skipped records so one warning can report them all."""

    def __init__(self, source: str, skip_bad: bool):
        self.source, self.skip_bad = source, skip_bad
        self.errors: list[DataError] = []

    def handle(self, error: DataError) -> None:
        if not self.skip_bad:
            raise error
        self.errors.append(error)

    def warn(self) -> None:
        if not self.errors:
            return
        shown = "; ".join(str(e) for e in self.errors[:3])
        more = f" (and {len(self.errors) - 3} more)" if len(self.errors) > 3 else ""
        warnings.warn(
            f"skipped {len(self.errors)} bad record(s) from {self.source}: {shown}{more}",
            SkippedRecordsWarning,
            stacklevel=3,
        )


def guarded(items: Iterable[T], build: Callable[[T], object], source: str, skip_bad: bool) -> Iterator:
    """Apply ``build`` to each item; skip (and count) or raise on DataError; warn at the end.

    ``build`` may return None to drop an item without counting it as bad.
    """
    counter = BadRecordCounter(source, skip_bad)
    iterator = iter(items)
    try:
        for item in iterator:
            try:
                result = build(item)
            except DataError as e:
                counter.handle(e)
                continue
            if result is not None:
                yield result
    finally:
        # Stopping early (an error, a limit) must still close the files a reader holds open.
        close = getattr(iterator, "close", None)
        if close is not None:
            close()
    counter.warn()
