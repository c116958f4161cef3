"""The supervisor's signals, as bytes in a pipe. Imports nothing heavy: the CLI installs it before anything else."""

from __future__ import annotations

import os
import signal


class SignalPipe:
    """The signals the supervisor handles, as bytes in a pipe (``signal.set_wakeup_fd``): the Python handlers do
    nothing, the loop reads which signals came. Installed first thing (before the imports and the config load, which
    take seconds with a large config), so a signal that comes during start-up waits for the loop instead of killing
    the process (SIGHUP's default action)."""

    HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD)

    def __init__(self) -> None:
        self.r, self.w = os.pipe()
        os.set_blocking(self.r, False)
        os.set_blocking(self.w, False)
        signal.set_wakeup_fd(self.w, warn_on_full_buffer=False)
        for sig in self.HANDLED:
            signal.signal(sig, _note_signal)
        # a parent may have started us with these blocked (the mask is inherited): we, and the workers, need them
        signal.pthread_sigmask(signal.SIG_UNBLOCK, self.HANDLED)

    def read(self) -> bytes:
        try:
            return os.read(self.r, 512)
        except BlockingIOError:
            return b""

    def leave(self) -> None:
        """In a forked worker: default dispositions back, the pipe closed."""
        signal.set_wakeup_fd(-1)
        for sig in self.HANDLED:
            signal.signal(sig, signal.SIG_DFL)
        os.close(self.r)
        os.close(self.w)


def _note_signal(signum, frame) -> None:
    """Signal handlers only wake the loop (through the wake-up fd); the loop reads which signal it was."""
