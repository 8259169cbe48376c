"""Errors that stop a run on purpose, with a message that says why (the CLI prints it, exit 1)."""


class RunStopped(RuntimeError):
    """The run cannot go on safely: too many verifier faults, non-finite training, a failed save."""
