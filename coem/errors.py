"""The one error type users see: it names the sample, the file and the problem."""

from __future__ import annotations


class CoemInputError(Exception):
    """Bad input, described so that an operator knows what to fix.

    The message reads ``sample 'S1', file 'rna.h5ad': <problem>`` (sample and file are left
    out when unknown).
    """

    def __init__(self, problem: str, sample: str | None = None, file: str | None = None):
        self.problem = problem
        self.sample = sample
        self.file = None if file is None else str(file)
        super().__init__(self._format())

    def _format(self) -> str:
        where = []
        if self.sample is not None:
            where.append(f"sample '{self.sample}'")
        if self.file is not None:
            where.append(f"file '{self.file}'")
        return (", ".join(where) + ": " if where else "") + self.problem

    def with_context(self, sample: str | None = None, file: str | None = None) -> "CoemInputError":
        """Return a copy that also names the sample/file (keeps what is already set)."""
        return CoemInputError(self.problem, sample=self.sample or sample, file=self.file or file)
