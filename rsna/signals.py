"""SIGTERM handling for commands that run worker processes.

Job schedulers and ``timeout`` stop a program with SIGTERM. Its default action ends the
main process at once, and the workers of a process pool keep running, re-parented to
PID 1. multiprocessing's forkserver and resource tracker then stay alive too, because the
workers hold their pipes open. Two tools prevent that:

- :func:`sigterm_raises` turns SIGTERM into a :class:`Terminated` exception in the main
  thread. ``finally`` blocks and context managers then clean up as they do for Ctrl-C,
  and the process exits with status 143, which is 128 + 15 as a shell reports SIGTERM.
- :func:`process_pool` is a ``ProcessPoolExecutor`` that cancels pending work and
  terminates its workers when its block raises, instead of waiting for their tasks.
"""

import contextlib
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from multiprocessing.context import BaseContext
from types import FrameType

logger = logging.getLogger(__name__)

EXIT_STATUS_SIGTERM = 128 + signal.SIGTERM
# Seconds a terminated worker gets to exit before it is killed with SIGKILL. Workers reset
# SIGTERM to its default action, so they normally exit within milliseconds.
TERMINATE_TIMEOUT_S = 5.0


class Terminated(SystemExit):
    """Exception that :func:`sigterm_raises` raises in the main thread on SIGTERM.

    A subclass of SystemExit, so ``except Exception`` lets it pass as it lets
    KeyboardInterrupt pass. Left uncaught, it ends the process with status 143 and no
    traceback.
    """

    def __init__(self) -> None:
        super().__init__(EXIT_STATUS_SIGTERM)


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """Raise :class:`Terminated` in the main thread when SIGTERM arrives inside the block.

    The first SIGTERM logs one WARNING and raises. Later ones are ignored, so they cannot
    interrupt the cleanup that the first one started. The previous handler is restored
    when the block ends. Nothing is installed outside the main thread (Python runs signal
    handlers only there) or when SIGTERM already has a handler other than the default
    action, such as one installed by an enclosing block or by the application.
    """
    in_main_thread = threading.current_thread() is threading.main_thread()
    if not in_main_thread or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    previous = signal.signal(signal.SIGTERM, _make_handler(owner_pid=os.getpid()))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _make_handler(*, owner_pid: int) -> Callable[[int, FrameType | None], None]:
    received = False

    def handle_sigterm(signum: int, frame: FrameType | None) -> None:
        nonlocal received
        if os.getpid() != owner_pid:
            # A child forked inside the block inherits this handler: end it as the
            # default action would.
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        if received:
            return
        received = True
        logger.warning(
            "received SIGTERM: stopping, removing partial outputs and exiting with status %d",
            EXIT_STATUS_SIGTERM,
        )
        raise Terminated

    return handle_sigterm


@contextlib.contextmanager
def process_pool(
    max_workers: int,
    *,
    mp_context: BaseContext | None = None,
    initializer: Callable[..., object] | None = None,
    initargs: tuple = (),
) -> Iterator[ProcessPoolExecutor]:
    """Yield a ``ProcessPoolExecutor`` whose workers never outlive a failed block.

    When the block ends normally, the pool shuts down as ``with ProcessPoolExecutor()``
    does. When it raises (:class:`Terminated`, KeyboardInterrupt or any error), pending
    work is cancelled, the workers are terminated (SIGTERM, then SIGKILL after
    :data:`TERMINATE_TIMEOUT_S`) and the exception propagates. SIGTERM raises
    :class:`Terminated` inside the block (see :func:`sigterm_raises`). An entry point that
    should also stop cleanly on SIGTERM outside the block wraps its work in
    :func:`sigterm_raises`. Workers start with the default action for SIGTERM, then run
    ``initializer(*initargs)``.
    """
    children_before = set(multiprocessing.active_children())
    with sigterm_raises():
        executor = ProcessPoolExecutor(
            max_workers,
            mp_context=mp_context,
            initializer=_initialize_worker,
            initargs=(initializer, initargs),
        )
        try:
            yield executor
        except BaseException:
            executor.shutdown(wait=False, cancel_futures=True)
            _stop_processes(set(multiprocessing.active_children()) - children_before)
            raise
        finally:
            executor.shutdown(wait=True, cancel_futures=True)


def _initialize_worker(initializer: Callable[..., object] | None, initargs: tuple) -> None:
    # A worker forked from a process with a SIGTERM handler inherits it. The default
    # action ends the worker at once, even inside a long call into C code.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if initializer is not None:
        initializer(*initargs)


def _stop_processes(processes: set[multiprocessing.process.BaseProcess]) -> None:
    """Terminate ``processes`` and wait for them, killing those still alive after a timeout."""
    for process in processes:
        process.terminate()

    deadline = time.monotonic() + TERMINATE_TIMEOUT_S
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            logger.warning(
                "worker process %d still runs after SIGTERM, so it gets SIGKILL", process.pid
            )
            process.kill()
            process.join()
