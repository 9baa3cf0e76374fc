"""The NCCL smoke test with broken collectives, for the negative tests: on rank 1 (and only
there) each float collective named in CORRUPT_COLLECTIVES (comma-separated; default all four:
all_reduce, all_gather, reduce_scatter, all_to_all) returns one element off by one; the others
stay right. Run under torchrun:

    CORRUPT_COLLECTIVES=all_to_all torchrun --standalone --nproc_per_node 2 tests/unit/data/corrupt_allreduce.py --cpu ...

Rank 0's own copy is right, so a verdict that trusted rank 0 alone would pass."""

import os
import sys

import torch.distributed as dist

BROKEN = set(os.environ.get("CORRUPT_COLLECTIVES", "all_reduce,all_gather,reduce_scatter,all_to_all").split(","))
_all_reduce = dist.all_reduce


def broken_all_reduce(tensor, *args, **kwargs):
    work = _all_reduce(tensor, *args, **kwargs)
    if int(os.environ["RANK"]) == 1 and tensor.is_floating_point() and tensor.numel() > 1:
        tensor.view(-1)[0] += 1
    return work


if "all_reduce" in BROKEN:
    dist.all_reduce = broken_all_reduce


def broken(op):
    """The same corruption for a collective whose first argument is its output."""

    def call(output, *args, **kwargs):
        work = op(output, *args, **kwargs)
        if int(os.environ["RANK"]) == 1 and output.is_floating_point() and output.numel() > 1:
            output.view(-1)[0] += 1
        return work

    return call


if "all_gather" in BROKEN:
    dist.all_gather_into_tensor = broken(dist.all_gather_into_tensor)
if "reduce_scatter" in BROKEN:
    dist.reduce_scatter_tensor = broken(dist.reduce_scatter_tensor)
if "all_to_all" in BROKEN:
    dist.all_to_all_single = broken(dist.all_to_all_single)

from smoke_tests import nccl  # noqa: E402 - after the patch, as the test body imports dist lazily anyway

sys.exit(nccl.main())
