"""Stop a training run soon after SIGINT (Ctrl-C) or SIGTERM, keeping its last complete checkpoint.

While :func:`stop_on_signals` is active, the first SIGINT or SIGTERM only records a request. Training
code asks :func:`stop_requested` at safe points: the PPO rollout after every env step, and
:class:`StopCheck` before every optimizer step of every kind. There it raises :class:`RunStopped`,
which abandons the half-done iteration: nothing is saved for it, so ``last.ckpt`` stays the last
complete checkpoint (the end of some earlier iteration) and ``shardlab resume`` continues from it.
A second signal gets the handler that was installed before (SIGTERM: the process dies at once;
SIGINT: KeyboardInterrupt), for a user who does not want to wait.

Exit codes follow the shell's convention for a process ended by a signal: 128 + the signal's number,
130 for SIGINT and 143 for SIGTERM. Each DDP process keeps its own request (every rank gets the
signal from the terminal, the launcher or the scheduler).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from types import FrameType
from typing import Any, Iterator, Optional

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities.exceptions import SIGTERMException

SIGNALS = (signal.SIGINT, signal.SIGTERM)

_requested: Optional[int] = None  # the signal number of the pending stop request, if any
_previous: dict[int, Any] = {}  # the handlers stop_on_signals replaced, for a second signal


class RunStopped(SystemExit):
    """Raised inside training after SIGINT/SIGTERM; its ``code`` is 128 + the signal number.

    A SystemExit, like Lightning's own SIGTERMException, so that ``except Exception`` blocks in
    callbacks and evals let it through instead of treating it as an error of theirs.
    """

    def __init__(self, signum: int):
        super().__init__(exit_code(signum))
        self.signum = signum


def exit_code(signum: int) -> int:
    """The exit status of a run stopped by signal ``signum`` (130 for SIGINT, 143 for SIGTERM)."""
    return 128 + int(signum)


def signal_name(signum: int) -> str:
    """SIGINT, SIGTERM, ... for a signal number."""
    return signal.Signals(signum).name


def stop_requested() -> bool:
    """Whether SIGINT or SIGTERM arrived while :func:`stop_on_signals` was active."""
    return _requested is not None


def raise_if_stop_requested() -> None:
    """Raise :class:`RunStopped` when a stop was requested; call it only where stopping is safe."""
    if _requested is not None:
        raise RunStopped(_requested)


def _handle(signum: int, frame: Optional[FrameType]) -> None:
    global _requested
    if _requested is None:
        _requested = signum  # only a flag: the training loop stops at its next safe point
        return
    # a second signal: whoever asked twice does not want to wait, so do what would have happened
    # without us (checkpoints are written atomically, so even a hard kill leaves none half-written)
    previous = _previous.get(signum, signal.SIG_DFL)
    if callable(previous):
        previous(signum, frame)
    elif previous != signal.SIG_IGN:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Turn SIGINT/SIGTERM into stop requests inside the block; the old handlers come back after it.

    Python lets only the main thread set handlers; elsewhere the block changes nothing. Lightning's
    own SIGTERM handler, set inside ``trainer.fit``, calls the handler installed here as well.
    """
    global _requested
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _requested = None
    _previous.clear()
    _previous.update({signum: signal.getsignal(signum) for signum in SIGNALS})
    for signum in SIGNALS:
        signal.signal(signum, _handle)
    try:
        yield
    finally:
        for signum, handler in _previous.items():
            # None: a handler not installed from Python, which cannot be put back from here
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        _previous.clear()
        _requested = None


class StopCheck(Callback):
    """Stops training before the next optimizer step once a stop was requested."""

    def on_train_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        """Take SIGTERM back from the handler Lightning set in ``trainer.fit`` (inside stop_on_signals).

        Lightning's handler would run ours too, but in DDP it first broadcasts from rank 0 inside the
        handler, which deadlocks when another rank is blocked in an all-reduce; and it makes the loop
        raise SIGTERMException itself. Lightning puts its captured handler (ours) back at teardown.
        """
        if _previous and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, _handle)

    def on_train_batch_start(self, trainer: pl.Trainer, module: pl.LightningModule, *args: Any) -> None:
        """Raise :class:`RunStopped` if SIGINT/SIGTERM arrived; an optimizer step is never half-done here."""
        raise_if_stop_requested()

    def on_exception(self, trainer: pl.Trainer, module: pl.LightningModule, exception: BaseException) -> None:
        """On the process that launched DDP workers, end them when the run stops (as Lightning does on
        KeyboardInterrupt): a worker blocked in an all-reduce would otherwise fail with a traceback
        once this rank is gone, or finish its rollout first. Workers write no checkpoints."""
        if isinstance(exception, (RunStopped, SIGTERMException)):
            launcher = trainer.strategy.launcher
            if launcher is not None and getattr(launcher, "procs", None):
                launcher.kill(signal.SIGKILL)
