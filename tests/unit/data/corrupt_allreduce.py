"""The NCCL smoke test with a broken all-reduce, for the negative test: on rank 1 (and only
there) every float all-reduce returns one element off by one. Run under torchrun:

    torchrun --standalone --nproc_per_node 2 tests/unit/data/corrupt_allreduce.py --cpu ...

Rank 0's own copy is right, so a verdict that trusted rank 0 alone would pass."""

import os
import sys

import torch.distributed as dist

_all_reduce = dist.all_reduce


def broken_all_reduce(tensor, *args, **kwargs):
    work = _all_reduce(tensor, *args, **kwargs)
    if int(os.environ["RANK"]) == 1 and tensor.is_floating_point() and tensor.numel() > 1:
        tensor.view(-1)[0] += 1
    return work


dist.all_reduce = broken_all_reduce

from smoke_tests import nccl  # noqa: E402 - after the patch, as the test body imports dist lazily anyway

sys.exit(nccl.main())
