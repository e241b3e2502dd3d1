"""Data parallelism: several devices in one process, several processes on MXNet's kvstore.

* :func:`sync_batch_norm` -- batch norm with statistics over a batch split across devices;
* :class:`DataParallelStep` -- the step ``mxbn.train.fit`` runs on several devices/workers;
* :func:`create_kvstore`, :func:`shard` -- MXNet's kvstore and each worker's share of the data.
"""
from .data_parallel import (DataParallelStep, across_devices, fingerprint, jitted_stages, per_device, replicate,
                            split_sizes)
from .kvstore import DIST_ENV, KVSTORE_TYPES, KVStoreError, check_kvstore, create_kvstore, is_distributed, shard
from .sync_batch_norm import sync_batch_norm

__all__ = ["sync_batch_norm", "DataParallelStep", "fingerprint", "across_devices", "jitted_stages", "per_device",
           "replicate", "split_sizes", "check_kvstore", "create_kvstore", "is_distributed", "shard", "KVSTORE_TYPES",
           "DIST_ENV", "KVStoreError"]
