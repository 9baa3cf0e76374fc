"""One error hierarchy. Each error is one line that says what failed and how to fix it;
tasks.py prints it and exits with the error's code, never with a traceback."""


class KitError(Exception):
    exit_code = 1

    def __init__(self, message: str, fix: str = "", log_tail: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix
        # What failed said last (a build step's, a service's lines): shown above the one line.
        self.log_tail = log_tail

    def __str__(self) -> str:
        return f"{self.message} (fix: {self.fix})" if self.fix else self.message


class UsageError(KitError):
    """Bad input: unknown topic, bad option, malformed data file."""

    exit_code = 2


class EngineError(KitError):
    """The Docker engine (or a client that can talk to it) is missing or refused."""

    exit_code = 3


class BuildError(KitError):
    """An image build failed; `log_tail` holds the failing step's last lines."""

    exit_code = 4


class LockError(KitError):
    """A lock is stale or disagrees with its framework."""

    exit_code = 5


class StackError(KitError):
    """A compose stack failed to come up; `log_tail` holds the failing service's last lines."""

    exit_code = 6


class Interrupted(KitError):
    """Ctrl-C, after the kit cleaned up what it had started."""

    exit_code = 130
