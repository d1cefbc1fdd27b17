"""ftray's failure types, in one place: `FtrayInputError`, the one type that means "the user's input is wrong"
(exit status 2, no traceback), and the typed ways a trial or its scoring fails."""


class FtrayInputError(ValueError):
    """Bad user input: a sweep field, a data file or row, a model name, a resource request.

    The message must name what is wrong (the field, file or row) and what would be accepted.
    """


class HubUnavailable(FtrayInputError):
    """A model or dataset lives on the Hugging Face hub and the hub cannot be reached from here."""


class ScoringFailed(RuntimeError):
    """A trial's adapter could not be scored (out of memory, a lost worker, a bug): the message names the
    trial and the cause in one line; the remote traceback is its __cause__ (shown with --debug)."""


class DidNotFitError(RuntimeError):
    """The model and batch do not fit in the accelerator's (or the host's) memory: retrying cannot help."""


class SweepInterrupted(Exception):
    """The sweep stopped before every trial ended (Ctrl-C: Tune saves its state and returns as if done):
    nothing is scored, pruned or reported; `ftray resume run_dir` goes on with it."""

    def __init__(self, run_dir: str, unfinished: int, of: int):
        super().__init__(f"interrupted with {unfinished} of {of} trials unfinished")
        self.run_dir, self.unfinished, self.of = run_dir, unfinished, of


class DivergedError(RuntimeError):
    """The training loss became NaN or infinite: the trial stopped, and retrying cannot help."""
