"""The Loader's iteration rule, as a ``DataLoader`` (issue 34): where each ``iter(loader)``
starts, :meth:`~fastcas.loading.loader.Loader.set_epoch`, and an iterator left open being
superseded. Functions of the loader (``self``), run on its consumer thread (the iteration rule
is the consumer's: the runner and finisher never read it).

Where an iteration starts (at its first ``next()``), :func:`begin`:

* evaluation (``train=False``): always at the first batch, the whole split;
* training: the epoch set by construction (0) or ``set_epoch`` at its first step; without
  ``set_epoch`` after an iteration, the next epoch's first step (a ``break`` does not continue
  the half epoch), or the same epoch when that iteration consumed nothing;
* after ``load_state_dict``: the loaded position, once; after an iteration ended by an error
  (e.g. ``WorkerDiedError``): the step that failed.

State: ``_next_start`` ((epoch, step) the next iteration starts at, or None: the rule above),
``_loaded`` (it came from ``load_state_dict``), ``_iter_id`` (the newest iteration's number)
and ``_iter_owner`` (the thread of an open iteration).
"""
from __future__ import annotations

import threading

LOCK = threading.Lock()  # guards Loader._iter_owner / _iter_id (which thread iterates a loader)


def supersede(self, what: str) -> None:
    """Before the epoch or state changes. Another thread's live iteration keeps reading the
    stream it started with: RuntimeError (``state_dict`` would describe another stream). An
    iterator of this thread left open (a loop left early whose generator is still referenced,
    as Lightning keeps one after ``limit_*_batches``) is superseded: its producer thread stops and
    resuming it raises RuntimeError."""
    owner = self._iter_owner
    if owner is not None and owner.is_alive() and owner is not threading.current_thread():
        raise RuntimeError(f"Loader.{what} during an iteration by thread {owner.name!r} (epoch {self.epoch}, "
                           f"step {self.step} of {self.steps}): finish the epoch or close the iterator first, "
                           "then call it before the next iter(loader)")
    if owner is not None:
        with LOCK:
            self._iter_id += 1
            self._iter_owner = None
        self._stop_producer()


def set_epoch(self, epoch: int) -> None:
    """See :meth:`fastcas.loading.loader.Loader.set_epoch`."""
    e = int(epoch)
    if e < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")
    if self._loaded and self._next_start is not None and e == self._next_start[0] + (
            self._next_start[1] >= self.steps):
        return  # the loaded position is in this epoch: resume there
    self._loaded = False
    if self._iter_owner is threading.current_thread() and e == self.epoch:
        self._next_start = (e, 0)  # the open iteration is this epoch (Lightning's): the next iter() restarts it
        return
    supersede(self, f"set_epoch({e})")
    self.epoch, self.step, self._next_start = e, 0, (e, 0)


def begin(self) -> None:
    """Set ``(epoch, step)`` to where a new iteration starts (the rule in the module docstring)."""
    if self._next_start is not None:
        epoch, step = self._next_start
    elif not self.config.train or self.step == 0:
        epoch, step = self.epoch, 0
    else:
        epoch, step = self.epoch + 1, 0
    if step >= self.steps:  # a state loaded at the end of its epoch: the next one starts
        epoch, step = epoch + 1, 0
    self.epoch, self.step = epoch, step
    self._next_start, self._loaded = None, False


SUPERSEDED = ("this iterator of the Loader was superseded by a later iter(loader), set_epoch or load_state_dict "
              "(the loader follows the newest one): iterate the loader again")
