"""Every local device, one process: the batch mesh of extraction and fine-tuning, and the refusal of
multi-process JAX launches.

The toolkit scales out with independent processes that split the work by files (`cxrfeat extract
--part i/N`, `heads sweep --shard i/N`), not with `jax.distributed`: under a multi-process launch
every process would compute and write the same store chunks or run folders.

Data parallelism inside a process: a one-axis mesh over `jax.local_devices()`; a batch is laid
out along it (`batch_sharding`, the batch padded to a multiple of the device count by the caller,
see `round_up`), parameters are replicated (`replicated`). `jax.jit` then runs each device on its
slice of the batch; a mean over the batch (a loss) becomes a cross-device reduction inserted by
the compiler, so gradients are averaged by the sharding, not by hand.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

BATCH_AXIS = "batch"


def batch_mesh(devices=None) -> Mesh:
    """A one-axis mesh (`batch`) over `devices` (default: every local device)."""
    devices = list(devices) if devices is not None else jax.local_devices()
    if not devices:
        raise ValueError("batch_mesh needs at least one device")
    return Mesh(np.array(devices), (BATCH_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over the mesh, the other axes whole."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """A full copy on every device of the mesh (parameters, statistics, optimizer state)."""
    return NamedSharding(mesh, PartitionSpec())


def round_up(n: int, multiple: int) -> int:
    """The least multiple of `multiple` that is >= n (a batch padded for the device count)."""
    return -(-int(n) // int(multiple)) * int(multiple)


def decode_workers(cpu_count: int | None, devices: int) -> int:
    """Default decode threads: enough to keep `devices` backbones fed (8 per device, at least 16),
    never more than 2 per CPU core (decoding is CPU-bound; PIL and numpy release the GIL)."""
    cores = max(1, cpu_count or 2)
    return max(1, min(2 * cores, max(16, 8 * devices)))
