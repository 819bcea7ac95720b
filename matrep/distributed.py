"""Several processes, one job: matrep on ``torch.distributed`` (DDP, launched by ``torchrun``).

matrep does not bring its own multi-process engine. It runs under PyTorch's launcher::

    torchrun --nproc-per-node 4 -m matrep fit --method texturevae ...      # one node
    matrep fit --nproc 4 ...                                               # the same, launched for you

and reads who it is from the environment torchrun sets (``RANK``, ``LOCAL_RANK``,
``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``). :func:`init` joins the process group with
the NCCL backend on CUDA and gloo on CPU; without torchrun everything here degrades to a
single-process no-op (:data:`SINGLE`), so library code calls the same functions either way.

Choices (see ``docs/distributed.md``):

* **Data order.** Epoch ``e`` visits the ``n`` samples in the order
  :func:`epoch_permutation` (``numpy.random.default_rng([seed, e]).permutation(n)``, the
  single-process order of the texture-VAE loop). :func:`shard_indices` deals that order out to
  the ranks like ``torch.utils.data.DistributedSampler(shuffle=True, seed=seed)``: padded by
  wrapping around to a multiple of the world size (``drop_last=False``) or truncated
  (``drop_last=True``), then rank ``r`` takes positions ``r, r + W, r + 2W, ...``. With
  ``permutation="torch"`` the indices are exactly DistributedSampler's (``torch.randperm`` with
  seed ``seed + epoch``).
* **Batches.** Training cuts the epoch order into *global* batches of the effective batch size
  ``B`` and gives rank ``r`` the slice ``batch[r::W]`` (:func:`split_batch`). When ``B`` is a
  multiple of ``W`` rank ``r`` then sees exactly ``order[r::W]`` over the epoch (the
  DistributedSampler shard, without padding); the last, short batch is split unevenly and
  :func:`local_loss_weight` weights each rank's mean loss so that the all-reduced gradient is
  the gradient of the mean over the global batch. So N ranks follow the single-process run
  over the same global batches, and a checkpoint position is a number of *global* batches
  (and samples), which any number of ranks can resume.
* **Learning rate.** :func:`scaling_rule`: ``"none"`` (default) — ``--batch-size`` is the
  effective (global) batch and the learning rate is unchanged, so results do not depend on the
  number of processes; ``"linear"`` — ``--batch-size`` is per rank, the effective batch is
  ``W`` times larger and the learning rate is multiplied by ``W`` (Goyal et al. 2017,
  arXiv:1706.02677). The rule is printed at start and recorded in the run's config.
* **Writes.** Only rank 0 writes files (:func:`main_only`, :attr:`DistContext.is_main`);
  every write still goes through :mod:`matrep.atomic`.
"""

from __future__ import annotations

import datetime as _dt
import functools
import math
import os
import socket
import subprocess
import sys
from dataclasses import asdict, dataclass, field

import numpy as np

from .errors import BadInputError

TORCHRUN_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
DEFAULT_TIMEOUT_MIN = 60.0


# ---------------------------------------------------------------------------------------
# environment
# ---------------------------------------------------------------------------------------
def in_torchrun(environ=None) -> bool:
    """True when this process was started by torchrun (``RANK`` and ``WORLD_SIZE`` are set)."""
    env = os.environ if environ is None else environ
    return "RANK" in env and "WORLD_SIZE" in env


def env_rank_world(environ=None) -> tuple[int, int, int]:
    """``(rank, local_rank, world_size)`` from torchrun's variables; ``(0, 0, 1)`` without them.

    Raises
    ------
    BadInputError
        A variable is not an integer or the rank is outside ``[0, world_size)``.
    """
    env = os.environ if environ is None else environ
    if not in_torchrun(env):
        return 0, 0, 1
    try:
        rank = int(env["RANK"])
        world = int(env["WORLD_SIZE"])
        local = int(env.get("LOCAL_RANK", rank))
    except ValueError:
        raise BadInputError(None, "RANK, LOCAL_RANK and WORLD_SIZE must be integers, got "
                                  f"RANK={env.get('RANK')!r}, LOCAL_RANK={env.get('LOCAL_RANK')!r}, "
                                  f"WORLD_SIZE={env.get('WORLD_SIZE')!r}; start with torchrun") from None
    if world < 1 or not 0 <= rank < world:
        raise BadInputError(None, f"rank {rank} is not in [0, {world}) (WORLD_SIZE={world}); "
                                  "start with torchrun")
    return rank, local, world


def resolve_backend(backend: str = "auto", device=None) -> str:
    """``"auto"`` → ``"nccl"`` when the job runs on CUDA, else ``"gloo"``."""
    if backend not in ("auto", "nccl", "gloo"):
        raise BadInputError(None, f"backend must be 'auto', 'nccl' or 'gloo', got {backend!r}")
    if backend != "auto":
        return backend
    import torch

    dev = str(device) if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
    if dev.startswith("cuda") and torch.cuda.is_available():
        return "nccl"
    return "gloo"


# ---------------------------------------------------------------------------------------
# the context
# ---------------------------------------------------------------------------------------
@dataclass
class DistContext:
    """Who this process is in the job, and the collectives matrep uses.

    In a single process (``world_size == 1``) every method is a cheap no-op, so callers need
    no ``if distributed`` branches.

    Attributes
    ----------
    rank, local_rank, world_size : int
    backend : "nccl", "gloo" or None (single process)
    device : str — the device this rank computes on (``"cuda:<local_rank>"`` or ``"cpu"``)
    """

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    backend: str | None = None
    device: str = "cpu"
    initialized_here: bool = field(default=False, repr=False)

    @property
    def is_main(self) -> bool:
        """True on rank 0, the only rank that writes files and prints."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    def describe(self) -> str:
        return (f"rank {self.rank}/{self.world_size} (local {self.local_rank}, "
                f"backend {self.backend or 'none'}, device {self.device})")

    # -- collectives (no-ops on one process) ---------------------------------------------
    def barrier(self) -> None:
        """Wait until every rank gets here."""
        if self.is_distributed:
            import torch.distributed as dist

            if self.backend == "nccl":
                dist.barrier(device_ids=[self.local_rank])
            else:
                dist.barrier()

    def broadcast_object(self, obj, src: int = 0):
        """``obj`` of rank ``src`` on every rank (picklable objects made by matrep only)."""
        if not self.is_distributed:
            return obj
        import torch.distributed as dist

        box = [obj if self.rank == src else None]
        dist.broadcast_object_list(box, src=src)
        return box[0]

    def all_gather_object(self, obj) -> list:
        """List of every rank's ``obj``, in rank order, on every rank."""
        if not self.is_distributed:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def gather_arrays(self, arr, dst: int = 0):
        """Every rank's numpy array, in rank order, on rank ``dst`` (None elsewhere)."""
        arr = np.asarray(arr)
        if not self.is_distributed:
            return [arr]
        import torch.distributed as dist

        out = [None] * self.world_size if self.rank == dst else None
        dist.gather_object(arr, out, dst=dst)
        return out

    def all_reduce_sum(self, values):
        """Element-wise sum over ranks of a sequence of floats (float64 on the wire)."""
        vals = [float(v) for v in values]
        if not self.is_distributed:
            return vals
        import torch
        import torch.distributed as dist

        dev = self.device if self.backend == "nccl" else "cpu"
        t = torch.tensor(vals, dtype=torch.float64, device=dev)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.cpu().tolist()

    # -- data --------------------------------------------------------------------------
    def shard(self, n: int, *, epoch: int, seed: int = 0, drop_last: bool = False,
              permutation: str = "numpy") -> np.ndarray:
        """This rank's indices of epoch ``epoch`` (see :func:`shard_indices`)."""
        return shard_indices(n, epoch=epoch, seed=seed, rank=self.rank,
                             world_size=self.world_size, drop_last=drop_last,
                             permutation=permutation)

    def split_batch(self, global_batch) -> np.ndarray:
        """This rank's part of a global batch (see :func:`split_batch`)."""
        return split_batch(global_batch, self.rank, self.world_size)

    # -- models ------------------------------------------------------------------------
    def wrap_model(self, model, **ddp_kwargs):
        """``model`` in DistributedDataParallel (unchanged on one process).

        DDP broadcasts rank 0's parameters and buffers at construction, so every rank starts
        from the same weights, and averages gradients over ranks in ``backward``.
        """
        return wrap_model(model, self, **ddp_kwargs)


SINGLE = DistContext()
_CURRENT: DistContext | None = None


def current() -> DistContext:
    """The context :func:`init` made in this process, or :data:`SINGLE`."""
    return _CURRENT if _CURRENT is not None else SINGLE


def init(backend: str = "auto", *, device=None, timeout_min: float | None = None) -> DistContext:
    """Join the process group when started by torchrun; a single-process context otherwise.

    Parameters
    ----------
    backend : {"auto", "nccl", "gloo"}, default "auto" — NCCL on CUDA, gloo on CPU
    device : "auto", "cpu", "cuda" or None — the device the job computes on; with CUDA each
        rank takes ``cuda:<LOCAL_RANK>``
    timeout_min : float, optional — collective timeout (default: ``$MATREP_DIST_TIMEOUT_MIN``
        or 60 minutes; a rank waits this long at a barrier for a slower one)

    Returns
    -------
    DistContext, also returned by :func:`current` until :func:`destroy`.
    """
    global _CURRENT
    rank, local, world = env_rank_world()
    import torch

    want_cuda = (device in (None, "auto") and torch.cuda.is_available()) or \
        (device is not None and str(device).startswith("cuda"))
    if want_cuda and not torch.cuda.is_available():
        raise BadInputError(None, f"device {device!r} was asked for but CUDA is not available")
    dev = f"cuda:{local % max(1, torch.cuda.device_count())}" if want_cuda else "cpu"
    if world == 1 and not torch.distributed.is_initialized():
        _CURRENT = DistContext(device="cuda" if want_cuda else "cpu")
        return _CURRENT
    import torch.distributed as dist

    be = resolve_backend(backend, dev)
    if be == "nccl":
        torch.cuda.set_device(dev)
    made = False
    if not dist.is_initialized():
        minutes = timeout_min if timeout_min is not None else \
            float(os.environ.get("MATREP_DIST_TIMEOUT_MIN", DEFAULT_TIMEOUT_MIN))
        kw = {"backend": be, "timeout": _dt.timedelta(minutes=minutes)}
        if be == "nccl":
            kw["device_id"] = torch.device(dev)
        dist.init_process_group(**kw)
        made = True
    else:
        be = dist.get_backend()
        rank, world = dist.get_rank(), dist.get_world_size()
    _CURRENT = DistContext(rank=rank, local_rank=local, world_size=world, backend=be,
                           device=dev, initialized_here=made)
    return _CURRENT


def destroy(ctx: DistContext | None = None) -> None:
    """Leave the process group if :func:`init` joined it (safe to call more than once)."""
    global _CURRENT
    ctx = ctx or _CURRENT
    if ctx is not None and ctx.initialized_here:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
        ctx.initialized_here = False
    if ctx is None or ctx is _CURRENT:
        _CURRENT = None


def main_only(func):
    """Decorator: run ``func`` on rank 0 only (returns None on the other ranks).

    For functions that write files or print; the caller makes the other ranks wait with
    :meth:`DistContext.barrier` when they need the result on disk.
    """

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        if current().is_main:
            return func(*args, **kwargs)
        return None

    return wrapper


def wrap_model(model, ctx: DistContext | None = None, **ddp_kwargs):
    """Wrap ``model`` in :class:`torch.nn.parallel.DistributedDataParallel` (no-op on one rank)."""
    ctx = ctx or current()
    if not ctx.is_distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    if ctx.backend == "nccl":
        ddp_kwargs.setdefault("device_ids", [int(str(ctx.device).split(":")[-1])])
    return DDP(model, **ddp_kwargs)


def unwrap_model(model):
    """The module inside a DDP wrapper (or ``model`` itself)."""
    return getattr(model, "module", model)


# ---------------------------------------------------------------------------------------
# data order
# ---------------------------------------------------------------------------------------
def epoch_permutation(n: int, *, seed: int, epoch: int, permutation: str = "numpy") -> np.ndarray:
    """The order of ``n`` samples in epoch ``epoch``.

    ``"numpy"``: ``numpy.random.default_rng([seed, epoch]).permutation(n)`` (matrep's
    single-process training order); ``"torch"``: ``torch.randperm(n)`` with a generator
    seeded ``seed + epoch`` (DistributedSampler's).
    """
    if permutation == "numpy":
        return np.random.default_rng([int(seed), int(epoch)]).permutation(int(n)).astype(np.int64)
    if permutation == "torch":
        import torch

        g = torch.Generator()
        g.manual_seed(int(seed) + int(epoch))
        return torch.randperm(int(n), generator=g).numpy().astype(np.int64)
    raise BadInputError(None, f"permutation must be 'numpy' or 'torch', got {permutation!r}")


def shard_indices(n: int, *, epoch: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                  drop_last: bool = False, permutation: str = "numpy") -> np.ndarray:
    """Rank ``rank``'s sample indices of epoch ``epoch``, as DistributedSampler deals them.

    The epoch order (:func:`epoch_permutation`) is padded by repeating its first indices up to
    ``ceil(n / W) * W`` (``drop_last=False``: every index is seen at least once, ``pad``
    indices twice) or cut to ``floor(n / W) * W`` (``drop_last=True``: ``n % W`` indices are
    skipped this epoch), and rank ``r`` takes every ``W``-th index from position ``r``. Every
    rank gets the same number of indices.

    >>> shard_indices(5, epoch=0, seed=0, rank=0, world_size=2, permutation="torch").tolist()
    [4, 1, 2]
    """
    n, W = int(n), int(world_size)
    if W < 1 or not 0 <= rank < W:
        raise BadInputError(None, f"rank {rank} is not in [0, {W})")
    order = epoch_permutation(n, seed=seed, epoch=epoch, permutation=permutation)
    if drop_last and n % W:
        per = math.ceil((n - W) / W)
    else:
        per = math.ceil(n / W)
    total = per * W
    if total > n:
        reps = math.ceil((total - n) / max(n, 1))
        order = np.concatenate([order] + [order] * reps)[:total] if n else order
    else:
        order = order[:total]
    return order[rank:total:W]


def split_batch(global_batch, rank: int, world_size: int) -> np.ndarray:
    """Rank ``rank``'s part ``global_batch[rank::world_size]`` of a global batch of indices."""
    return np.asarray(global_batch)[int(rank)::int(world_size)]


def local_loss_weight(n_local: int, n_global: int, world_size: int) -> float:
    """Factor on a rank's *mean* loss so DDP's gradient average equals the global mean's.

    DDP averages gradients over ranks (divides their sum by ``W``); a rank holding
    ``n_local`` of the ``n_global`` samples of the step therefore multiplies its mean loss by
    ``W * n_local / n_global``. With equal shares the factor is 1.
    """
    if n_global <= 0:
        return 0.0
    return float(world_size) * float(n_local) / float(n_global)


# ---------------------------------------------------------------------------------------
# batch size and learning rate
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ScalingRule:
    """Effective batch size and learning rate of a run on ``world_size`` processes."""

    rule: str
    world_size: int
    batch_size: int          # as given (global for "none", per rank for "linear")
    effective_batch: int     # samples per optimiser step, all ranks together
    per_rank_batch: int      # most samples one rank handles per step
    base_lr: float
    lr: float                # the learning rate the optimiser uses

    def describe(self) -> str:
        how = {"none": "learning rate not scaled",
               "linear": f"learning rate scaled linearly by {self.world_size} (Goyal et al. 2017)"}
        return (f"{self.world_size} process(es): effective batch {self.effective_batch} "
                f"({self.per_rank_batch} per process), lr {self.lr:g} "
                f"(base {self.base_lr:g}, rule {self.rule!r}: {how[self.rule]})")

    def to_dict(self) -> dict:
        return asdict(self)


def scaling_rule(batch_size: int, lr: float, world_size: int = 1, rule: str = "none") -> ScalingRule:
    """The effective batch size and learning rate for ``world_size`` processes.

    ``rule="none"`` (default): ``batch_size`` is the effective batch of one optimiser step,
    split over the ranks (``ceil(batch_size / W)`` per rank), and ``lr`` is used as given — the
    run is the single-process run, whatever the number of processes.
    ``rule="linear"``: ``batch_size`` is per rank, the effective batch is ``W * batch_size``
    and the learning rate ``W * lr`` (the linear scaling rule of Goyal et al. 2017,
    arXiv:1706.02677; a warm-up is advisable for large ``W``).

    >>> scaling_rule(16, 1e-3, 2).per_rank_batch, scaling_rule(16, 1e-3, 2, "linear").lr
    (8, 0.002)
    """
    B, W = int(batch_size), int(world_size)
    if B < 1 or W < 1:
        raise BadInputError(None, f"batch size and world size must be >= 1, got {B} and {W}")
    if rule == "none":
        return ScalingRule("none", W, B, B, math.ceil(B / W), float(lr), float(lr))
    if rule == "linear":
        return ScalingRule("linear", W, B, B * W, B, float(lr), float(lr) * W)
    raise BadInputError(None, f"lr scaling rule must be 'none' or 'linear', got {rule!r}")


# ---------------------------------------------------------------------------------------
# launching
# ---------------------------------------------------------------------------------------
def free_port() -> int:
    """A TCP port free on this machine right now (for a local rendezvous)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_command(nproc: int, argv, *, nnodes: int = 1, node_rank: int | None = None,
                     rdzv_endpoint: str | None = None, rdzv_backend: str = "c10d",
                     module: str = "matrep", python: str | None = None) -> list[str]:
    """The ``python -m torch.distributed.run ... -m matrep ARGV`` command line.

    One node: ``--standalone`` (torchrun picks a free local port). Several nodes: give the
    same ``rdzv_endpoint`` (``HOST:PORT`` of one of them) on every node.
    """
    if int(nproc) < 1:
        raise BadInputError(None, f"--nproc must be >= 1, got {nproc}")
    cmd = [python or sys.executable, "-m", "torch.distributed.run",
           "--nproc-per-node", str(int(nproc))]
    if int(nnodes) == 1 and rdzv_endpoint is None:
        cmd.append("--standalone")
    else:
        if rdzv_endpoint is None:
            raise BadInputError(None, "a multi-node run needs --rdzv-endpoint HOST:PORT")
        cmd += ["--nnodes", str(int(nnodes)), "--rdzv-backend", rdzv_backend,
                "--rdzv-endpoint", rdzv_endpoint]
        if node_rank is not None:
            cmd += ["--node-rank", str(int(node_rank))]
    return cmd + ["-m", module, *[str(a) for a in argv]]


def launch(nproc: int, argv, **kwargs) -> int:
    """Re-run ``matrep ARGV`` under torchrun with ``nproc`` processes; return its exit code.

    Used by ``matrep fit --nproc N``. ``argv`` must not contain ``--nproc`` again. Extra
    keyword arguments go to :func:`torchrun_command`.
    """
    cmd = torchrun_command(nproc, argv, **kwargs)
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // max(1, int(nproc)))))
    return subprocess.call(cmd, env=env)


def strip_option(argv, name: str, takes_value: bool = True) -> list[str]:
    """``argv`` without the option ``name`` (``--nproc 2`` and ``--nproc=2`` forms)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == name:
            skip = takes_value
            continue
        if takes_value and a.startswith(name + "="):
            continue
        out.append(a)
    return out


__all__ = ["DistContext", "SINGLE", "current", "init", "destroy", "in_torchrun",
           "env_rank_world", "resolve_backend", "main_only", "wrap_model", "unwrap_model",
           "epoch_permutation", "shard_indices", "split_batch", "local_loss_weight",
           "ScalingRule", "scaling_rule", "free_port", "torchrun_command", "launch",
           "strip_option"]
