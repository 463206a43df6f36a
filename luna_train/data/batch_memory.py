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
import sys
import threading

import numpy as np
import torch

_IN_USE_REFS = 3  # the pool's list, the loop variable and getrefcount's argument: nobody else's


def shared_tensor(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialized tensor in shared memory, allocated there (no copy)."""
    storage = torch.UntypedStorage._new_shared(int(np.prod(shape)) * dtype.itemsize)
    return torch.empty(0, dtype=dtype).set_(storage, 0, shape)


class BatchMemory:
    """Batch arrays for one dataset: shared memory in a worker, recycled arrays in the main process.

    At most ``keep`` arrays are recycled; when all are in use (a consumer holding many batches) a
    fresh array is returned and not kept. Thread-safe; a pickled copy starts empty.
    """

    def __init__(self, keep: int = 6):
        self.keep = int(keep)
        self._arrays: list[np.ndarray] = []
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
        with self._lock:
            if self._pid != os.getpid():  # a forked copy: the parent's arrays are not ours to reuse
                self._arrays, self._pid = [], os.getpid()
            for k in range(len(self._arrays)):  # not enumerate: its cached tuple would hold a reference
                array = self._arrays[k]
                if sys.getrefcount(array) > _IN_USE_REFS:
                    continue
                if array.shape == shape and array.dtype == dtype:
                    return torch.from_numpy(array)
                fresh = self._arrays[k] = np.empty(shape, dtype)  # a free array of another shape makes room
                return torch.from_numpy(fresh)
            fresh = np.empty(shape, dtype)
            if len(self._arrays) < self.keep:
                self._arrays.append(fresh)
            return torch.from_numpy(fresh)
