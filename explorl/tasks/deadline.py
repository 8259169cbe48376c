"""A time limit on a block of Python code, for verifiers whose parsers can run away.

``with deadline(seconds):`` raises ``Expired`` inside the block once ``seconds`` have passed,
through a SIGALRM timer, so it works only on the main thread (the verifier worker's, or the
trainer's with ``verify.isolate: false``); elsewhere the block runs without a limit and the
guard's own limit (``explorl.tasks.guard``) is what stops a hang. When a timer is already
running (the guard's in-process limit) and would fire first, it is left alone; otherwise it
is suspended for the block and resumed, less the time spent, afterwards. ``Expired`` is a
``BaseException``, so the ``except Exception`` of the code under the limit cannot swallow it;
the timer keeps firing until the block ends, since Python drops an exception raised inside a
destructor or a weakref callback.
"""
from __future__ import annotations

import signal
import threading
import time
from contextlib import contextmanager


#: How often the timer fires again once the time is up, until the block has ended.
RETRY_S = 0.05


class Expired(BaseException):
    pass


@contextmanager
def deadline(seconds: float):
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    outer = signal.getitimer(signal.ITIMER_REAL)[0]
    if outer and outer <= seconds:
        yield
        return
    armed = [True]

    def expire(signum, frame):
        if armed[0]:
            raise Expired()

    previous = signal.signal(signal.SIGALRM, expire)
    start = time.monotonic()
    # and again every RETRY_S: an exception raised while a destructor or weakref callback runs
    # is printed and dropped by Python, so one alarm alone may be lost
    signal.setitimer(signal.ITIMER_REAL, seconds, RETRY_S)
    try:
        yield
    finally:
        while True:  # the timer may fire even here: retry until it is disarmed
            try:
                armed[0] = False
                break
            except Expired:
                continue
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer:
            signal.setitimer(signal.ITIMER_REAL, max(outer - (time.monotonic() - start), 1e-6))
