"""Pickling of objects that hold a thread lock (data sources and tokenizers sent to grain's
worker processes): the lock stays behind and each copy gets its own."""

import threading


class FreshLockOnUnpickle:
  """Mixin for classes with a `_lock` attribute: pickles without it, unpickles with a new one."""

  def __getstate__(self):
    state = dict(self.__dict__)
    state.pop("_lock", None)
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._lock = threading.Lock()
