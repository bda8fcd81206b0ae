"""A sweep stopped by a signal: SIGTERM (a Slurm job's time limit, a Kubernetes eviction) ends it
as Ctrl-C (SIGINT) does.

While Ray Tune runs the trials a stop must go through Tune: it stops the trials and saves its
experiment state one last time, which ``--resume`` restores. Anywhere else (opening, stages,
caches, summary) nothing needs saving first, so the sweep stops at once. :class:`Signals` holds
both signals for the sweep's duration and chooses: inside ``Tuner.fit`` the first one goes to
Tune's graceful stop and the sweep raises :class:`Terminated` once ``fit`` returns (a second one
stops at once, as a second Ctrl-C does in Tune); outside it :class:`Terminated` is raised at once.
The sweep then closes every MLflow run it left open as KILLED (:meth:`dakd.sweep.driver.run.Sweep.run`)
and the driver exits with 128 + the signal's number (``sweeps/run.py``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator

#: Tune takes SIGINT for its graceful stop unless this is 1; SIGUSR1 leads to the same stop
#: either way. The sweep keeps SIGINT itself, so that Ctrl-C and SIGTERM are told apart and seen
#: at all: Tune's handler only sets an event of its own.
TUNE_SIGINT_OFF = "TUNE_DISABLE_SIGINT_HANDLER"

#: What the sweep holds: Ctrl-C, and what a scheduler sends before it kills a job.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Terminated(KeyboardInterrupt):
    """The sweep was stopped by signal ``signum``. A :class:`KeyboardInterrupt`, so whatever ends
    a run KILLED on Ctrl-C (``RunLogger`` as a context manager, the sweep's close) does the same
    for SIGTERM, and no ``except Exception`` on the way swallows it."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)
        #: The MLflow runs the sweep closed as KILLED on its way out (set by the sweep).
        self.closed = 0

    @property
    def exit_code(self) -> int:
        """What a shell reports for a process ended by the signal: 143 for SIGTERM, 130 for
        Ctrl-C; schedulers and job scripts read it as "stopped", not "failed"."""
        return 128 + self.signum

    @property
    def signal_name(self) -> str:
        name = signal.Signals(self.signum).name
        return f"{name} (Ctrl-C)" if self.signum == signal.SIGINT else name

    @property
    def reason(self) -> str:
        """The ``error`` tag of each run the signal left open: why it stopped, and what to do."""
        return f"terminated by {self.signal_name}; continue with --resume"


class Stopped(RuntimeError):
    """The sweep stopped itself (:meth:`Signals.fail`): it could not go on, e.g. the nodes that
    could run its trials were lost for longer than the spec waits. Its runs were closed as a
    signal closes them (KILLED, with the reason as their ``error`` tag), so ``--resume``
    continues it; the driver exits 1 with the reason."""

    def __init__(self, reason: str, closed: int = 0):
        super().__init__(reason)
        self.reason = reason
        #: The MLflow runs the sweep closed as KILLED on its way out.
        self.closed = closed


class Signals:
    """SIGINT and SIGTERM while a sweep runs (:meth:`installed`), turned into one graceful stop.

    The first signal inside :meth:`tune_running` goes to Tune's own stop handler (Tune stops its
    trials, saves its state, and ``fit`` returns; :meth:`check` then raises); any other signal
    raises :class:`Terminated` where the sweep is. Once the sweep is stopping, later signals are
    ignored: closing its runs is short, and a second signal would leave them half closed."""

    def __init__(self) -> None:
        #: The first signal received (``None``: none yet); it names the stop.
        self.received: int | None = None
        self.stopping = False  # Terminated was raised: the sweep is closing its runs
        self._installed = False
        self._in_tune = False
        self._forwarded = False  # the first signal went to Tune's stop
        self._usr1_before = None  # SIGUSR1's handler before Tune put its own there
        #: Why the sweep stopped itself (:meth:`fail`); ``None`` when a signal stopped it.
        self.failure: str | None = None

    def fail(self, reason: str) -> bool:
        """Stop the sweep from another thread (a watch that found it cannot go on), the way a
        Ctrl-C stops it (Tune saves its state, every open run ends KILLED), with ``reason`` as
        the cause; whether the stop was sent. Only a sweep holding the signals can be stopped so
        (one run off the main thread cannot: it goes on, and its trials wait)."""
        if not self._installed or self.received is not None:
            return False
        self.failure = reason
        os.kill(os.getpid(), signal.SIGINT)
        return True

    @contextlib.contextmanager
    def installed(self) -> Iterator[Signals]:
        """Hold SIGINT and SIGTERM until the block ends, then give back the handlers found.

        Only the main thread may set signal handlers (and only it receives signals): a sweep run
        from another thread keeps the process's handlers, and a signal does what it did before."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._handle)
        self._installed = True
        try:
            yield self
        finally:
            self._installed = False
            for signum, handler in previous.items():
                if handler is not None:  # None: set outside Python, cannot be put back
                    signal.signal(signum, handler)

    def reclaim(self) -> None:
        """Take both signals back from code that set its own handler while the sweep runs:
        ``ray.init`` sets one for SIGTERM that exits the driver at once (``sys.exit``), which
        leaves the trials' runs open and Tune's state unsaved."""
        if self._installed:
            for signum in STOP_SIGNALS:
                signal.signal(signum, self._handle)

    @contextlib.contextmanager
    def tune_running(self) -> Iterator[None]:
        """Around ``Tuner.fit``: Tune leaves SIGINT to the sweep (``TUNE_DISABLE_SIGINT_HANDLER``)
        and installs its stop handler on SIGUSR1, where :meth:`_handle` finds it. Tune never puts
        SIGUSR1 back, so the block does; and the variable is restored, as the block found it."""
        before_env = os.environ.get(TUNE_SIGINT_OFF)
        os.environ[TUNE_SIGINT_OFF] = "1"
        self._usr1_before = signal.getsignal(signal.SIGUSR1)
        self._in_tune = True
        try:
            yield
        finally:
            self._in_tune = False
            if before_env is None:
                os.environ.pop(TUNE_SIGINT_OFF, None)
            else:
                os.environ[TUNE_SIGINT_OFF] = before_env
            if self._installed and self._usr1_before is not None:
                signal.signal(signal.SIGUSR1, self._usr1_before)

    def check(self) -> None:
        """After ``Tuner.fit``: a signal stopped Tune (its state is saved); the sweep stops now."""
        if self.received is not None:
            self._stop()

    def _handle(self, signum: int, frame) -> None:
        if self.stopping:
            return
        if self.received is None:
            self.received = signum
        tune = self._tune_stop()
        if tune is not None:
            self._forwarded = True
            tune(signal.SIGUSR1, frame)  # Tune ends its loop, saves its state; fit returns
            return
        self._stop()

    def _tune_stop(self):
        """Tune's stop handler, while ``fit`` runs and no signal went to it yet; else ``None``
        (before Tune's loop starts there is nothing to save: the sweep stops at once)."""
        if not self._in_tune or self._forwarded:
            return None
        handler = signal.getsignal(signal.SIGUSR1)
        if callable(handler) and handler != self._usr1_before:
            return handler
        return None

    def _stop(self):
        self.stopping = True
        raise Terminated(self.received)
