"""Host memory for the batches a :class:`~luna_train.data.dataset.PatchDataset` decodes into.

A batch of 32 patches at 64^3 is 16 MB (image and label). Fresh memory costs its page faults and the
kernel's zeroing on every batch, and ``share_memory_()`` on a fresh tensor allocates shared memory and
copies the tensor into it. So:

- in a DataLoader worker, a batch is allocated in shared memory directly (as torch's
  ``default_collate`` does), and crosses to the main process without a copy;
- in the process that trains (``num_workers=0``), arrays are recycled: one is handed out again only
  once nothing refers to it any more (the training step dropped its batch and every view of it).

On the development VM decoding into fresh arrays cost 0.32 ms a patch against 0.26 ms into recycled
ones, and the shared allocation took 8.5 ms a batch array with ``share_memory_()`` against 5.0 ms.
"""

from __future__ import annotations

import os
import threading
import weakref

import numpy as np
import torch


def shared_tensor(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialized tensor in shared memory, allocated there (no copy)."""
    storage = torch.UntypedStorage._new_shared(int(np.prod(shape)) * dtype.itemsize)
    return torch.empty(0, dtype=dtype).set_(storage, 0, shape)


class BatchMemory:
    """Batch arrays for one dataset: shared memory in a worker, recycled arrays in the main process.

    Each kept array is handed out as a fresh numpy view of it, watched by a weak reference: torch keeps
    that view alive for as long as any tensor of the batch (or a view of one) lives, so the array is
    free exactly when the weak reference is dead. At most ``keep`` arrays are kept; when all are in use
    (a consumer holding many batches) a fresh array is returned and not kept. Thread-safe; a pickled copy
    starts empty.
    """

    def __init__(self, keep: int = 6):
        self.keep = int(keep)
        self._slots: list[tuple[np.ndarray, weakref.ref | None]] = []  # (array, its view in use, if any)
        self._lock = threading.Lock()
        self._pid = os.getpid()

    def __getstate__(self) -> dict:
        return {"keep": self.keep}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["keep"])

    def tensor(self, shape: tuple[int, ...], dtype: np.dtype) -> torch.Tensor:
        """An uninitialized (``shape``, ``dtype``) tensor for a batch to be decoded into."""
        dtype = np.dtype(dtype)
        if torch.utils.data.get_worker_info() is not None:
            return shared_tensor(shape, torch.from_numpy(np.empty(0, dtype)).dtype)
        shape = tuple(int(n) for n in shape)
        with self._lock:
            if self._pid != os.getpid():  # a forked copy: the parent's arrays are not ours to reuse
                self._slots, self._pid = [], os.getpid()
            free = [k for k, (_, in_use) in enumerate(self._slots) if in_use is None or in_use() is None]
            fitting = [k for k in free if self._slots[k][0].shape == shape and self._slots[k][0].dtype == dtype]
            if fitting:
                k = fitting[0]
            elif free:  # a free array of another shape makes room
                k = free[0]
                self._slots[k] = (np.empty(shape, dtype), None)
            elif len(self._slots) < self.keep:
                k = len(self._slots)
                self._slots.append((np.empty(shape, dtype), None))
            else:
                return torch.from_numpy(np.empty(shape, dtype))
            view = self._slots[k][0].view()
            self._slots[k] = (self._slots[k][0], weakref.ref(view))
            return torch.from_numpy(view)
