"""The ring's communication: every rank sends to the next rank and receives
from the previous one, with torch.distributed's point-to-point ops (gloo on
the CPU, NCCL on CUDA)."""
import torch
import torch.distributed as dist


class PendingPass:
    """Tensors on their way from the previous rank. ``wait()`` returns them
    once they have arrived and this rank's own sends have left, so that the
    sent tensors may be freed or reused."""

    def __init__(self, works, received):
        self._works = works
        self._received = received

    def wait(self):
        for work in self._works:
            work.wait()
        return self._received


class Ring:
    """A process group seen as a ring: rank r passes to r+1 and takes from r-1."""

    def __init__(self, group=None):
        self.group = dist.group.WORLD if group is None else group
        self.rank = dist.get_rank(self.group)
        self.world_size = dist.get_world_size(self.group)
        # P2POp takes ranks in the default group.
        self._next = dist.get_global_rank(self.group, (self.rank + 1) % self.world_size)
        self._prev = dist.get_global_rank(self.group, (self.rank - 1) % self.world_size)

    def source(self, step):
        """The rank whose keys and values this rank holds at ring step ``step``."""
        return (self.rank - step) % self.world_size

    def pass_along(self, tensors, tag):
        """Starts sending ``tensors`` (contiguous) to the next rank and
        receiving their like from the previous one, and returns at once.
        Passes in flight together need different tags: gloo matches a
        message by sender and tag."""
        if self.world_size == 1:
            return PendingPass([], tensors)
        received = [torch.empty_like(t) for t in tensors]
        ops = [dist.P2POp(dist.isend, t, self._next, self.group, tag + i) for i, t in enumerate(tensors)]
        ops += [dist.P2POp(dist.irecv, t, self._prev, self.group, tag + i) for i, t in enumerate(received)]
        return PendingPass(dist.batch_isend_irecv(ops), received)
