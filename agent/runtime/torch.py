"""The PyTorch edge of the runtime: an ``nn.Module`` and its optimizer in the
framework-neutral trainer, and building blocks for scripts that write their own step.

- :class:`TorchModel` adapts a module, an optimizer and a per-sample loss to
  :class:`~agent.runtime.adapter.ModelAdapter`; :class:`Trainer` is the trainer of
  :mod:`agent.runtime.trainer` on one. Everything above the adapter (live commands,
  strategies, monitors, elasticity, checkpoints) is the same code the TensorFlow
  runtime runs.
- :func:`broadcast_parameters`, :func:`allreduce_gradients` and
  :class:`DistributedOptimizer` synchronise a script's own training step.
- :func:`configure_torch_threads`, :func:`evaluate_accuracy`.

**Gradients as views of one buffer.** Every trainable parameter's ``.grad`` is a view
of one flat float32 buffer (laid out in reverse registration order, roughly the order
backward produces gradients), followed by the loss sum, the correct count, the
monitor's squared norm and the command agreement's slots. Backward accumulates straight
into that buffer, the native library reduces it in place, and the optimizer reads the
reduced values through the same views: no copy between autograd, the allreduce and the
update (PyTorch DDP's ``gradient_as_bucket_view``).

**Buckets overlapped with backward.** The buffer is cut into buckets of at least
``bucket_bytes`` at parameter boundaries. A post-accumulate-grad hook counts each
bucket's gradients; once a bucket is complete (and every bucket before it), its
allreduce starts in the communicator's background thread while backward goes on with
the earlier layers (DDP's reducer). Buckets start strictly in buffer order, so every
rank issues the same sequence of collectives whatever order its hooks fire in. The last
bucket carries the scalars and the command agreement and is reduced by the trainer's
``allreduce_in_step`` once backward is done; since a synchronous call waits for the
queued ones, the time it takes is the communication backward did not hide. A small
model (digits) is one bucket: one allreduce per step.

CUDA tensors: for a model on a GPU the buffer is in device memory
(:mod:`agent.runtime.torch_grads`) and the native library reduces its buckets from there,
staged through pinned host memory in chunks; only the last bucket, with the scalars,
goes through the host buffer. Only this module and that one import PyTorch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch

from agent.runtime import torch_grads, trainer
from agent.runtime.session import Session

# Buckets of at least this many bytes (the last one takes what is left). 1 MB lets the
# largest layer's allreduce start as soon as its gradient exists, without cutting small
# models into many calls.
DEFAULT_BUCKET_BYTES = 1 << 20


# Up to this many values a squared norm is NumPy's dot product: OpenBLAS computes a dot
# product of at most 10,000 values on the calling thread, and NumPy's call costs a
# quarter of PyTorch's (0.8 µs against 3.3 µs on digits' 4,810 gradients).
_NUMPY_DOT_MAX = 8192


def _squared_norm(values: np.ndarray) -> float:
    """Sum of squares of a host float32 vector. A small one with NumPy's ``dot``; a large
    one as one PyTorch op (``torch.dot``), on PyTorch's threads, which
    ``configure_torch_threads`` limits, rather than NumPy's BLAS pool, which starts a
    thread per core for a large vector and competes with the other workers on the node."""
    if values.size <= _NUMPY_DOT_MAX:
        return float(values.dot(values))
    tensor = torch.from_numpy(values)
    return float(torch.dot(tensor, tensor))


def _per_sample_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(logits, labels, reduction="none")


def _summed_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(logits, labels, reduction="sum")


class TorchModel:
    """An ``nn.Module``, its optimizer and a per-sample loss as a
    :class:`~agent.runtime.adapter.ModelAdapter`.

    ``loss_fn(logits, labels)`` returns one loss per sample (``reduction="none"``; the
    default is cross-entropy on integer labels). ``session`` gives the bucketed
    allreduce its communicator; without one (or with ``bucket_bytes=0``) the gradients
    go through ``allreduce_in_step`` as one buffer after backward."""

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        *,
        session: Session | None = None,
        bucket_bytes: int = DEFAULT_BUCKET_BYTES,
    ):
        if bucket_bytes < 0:
            raise ValueError(f"bucket_bytes must be 0 (one bucket) or more, got {bucket_bytes}")
        self.model = model
        self.optimizer = optimizer
        self.loss_fn = loss_fn or _per_sample_cross_entropy
        # The default loss sums in the loss op itself (one op, and one backward node,
        # fewer than per-sample losses and their sum; the same gradients).
        self._loss_sum: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = (
            _summed_cross_entropy
            if loss_fn is None
            else lambda logits, labels: self.loss_fn(logits, labels).sum()
        )
        # 1/B as the gradient backward starts from, by global batch B (see _forward_backward).
        self._inverse_batch: dict[int, torch.Tensor] = {}
        self.session = session
        self.bucket_bytes = bucket_bytes
        self._params: list[torch.nn.Parameter] = []
        self._sizes: list[int] = []
        self._offsets: list[int] = []
        self._n = 0
        self._extra = -1
        self._flat = torch.zeros(0)
        self._flat_np = np.zeros(0, np.float32)
        self._scalars = self._flat
        self._allreduce: Callable[[np.ndarray], np.ndarray] = lambda flat: flat
        # Buckets: [start, end) ranges of the buffer; the bucket of each parameter.
        self._buckets: list[tuple[int, int]] = []
        self._bucket_of: list[int] = []
        # Per step, while backward runs with the overlap armed.
        self._armed = False
        self._monitor = False
        self._pending: list[int] = []
        self._launched = 0
        self._handles: list[Any] = []
        self._local_sq = 0.0
        self._device = torch.device("cpu")
        # A model on a GPU: the gradients' flat buffer in device memory (None: .grad is a
        # view of the host buffer, or a device copy of it with ADAPTRAIN_TORCH_GRADS_ON_DEVICE=off).
        self._on_device: torch_grads.DeviceGradients | None = None

    # -- setup ---------------------------------------------------------------------------
    def build(
        self, x_sample: np.ndarray, allreduce_in_step: Callable[[np.ndarray], np.ndarray]
    ) -> None:
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the model has no trainable parameters")
        if any(p.dtype != torch.float32 for p in params):
            raise ValueError("the runtime trains float32 parameters only; call model.float()")
        self._device = params[0].device
        # Reverse registration order: backward produces the last layers' gradients first,
        # so the buffer fills from its start and the first buckets are ready first.
        self._params = list(reversed(params))
        self._sizes = [p.numel() for p in self._params]
        self._offsets = [int(o) for o in np.cumsum([0, *self._sizes[:-1]])]
        self._n = int(sum(self._sizes))
        self._allreduce = allreduce_in_step
        self._plan_buckets()
        self._on_device = torch_grads.for_model(self._params, self._device)
        self._ensure_buffer(0)
        self._materialize_optimizer_state()
        if len(self._buckets) > 1:
            # One bucket (a small model) never overlaps: no Python hook per parameter
            # and step, whose calls from autograd cost more than such a model's backward.
            for index, p in enumerate(self._params):
                p.register_post_accumulate_grad_hook(self._hook(index))

    def _plan_buckets(self) -> None:
        """Cut the buffer at parameter boundaries into buckets of ≥ bucket_bytes."""
        self._buckets, self._bucket_of = [], []
        start = 0
        for offset, size in zip(self._offsets, self._sizes, strict=True):
            self._bucket_of.append(len(self._buckets))
            end = offset + size
            if self.bucket_bytes and (end - start) * 4 >= self.bucket_bytes and end < self._n:
                self._buckets.append((start, end))
                start = end
        self._buckets.append((start, self._n))  # the last bucket, with the tail

    def _ensure_buffer(self, extra_slots: int) -> None:
        """One buffer for the gradients, three scalars and ``extra_slots`` agreement
        slots, with every parameter's ``.grad`` a view of it (rebuilt when the number of
        agreement slots changes, i.e. when the job resizes)."""
        if extra_slots == self._extra:
            return
        self._flat = torch.zeros(self._n + 3 + extra_slots, dtype=torch.float32)
        self._flat_np = self._flat.numpy()
        # The loss sum and the correct count, written by one op per step.
        self._scalars = self._flat[self._n : self._n + 2]
        self._extra = extra_slots
        self._point_grads_at_buffer()

    def _apart(self) -> bool:
        """Whether the .grad tensors live apart from the host buffer (copied to and fro)."""
        return self._on_device is not None or self._device.type != "cpu"

    def _point_grads_at_buffer(self) -> None:
        if self._on_device is not None:
            self._on_device.point_grads()
            return
        on_host = self._device.type == "cpu"
        for p, offset, size in zip(self._params, self._offsets, self._sizes, strict=True):
            view = self._flat[offset : offset + size].view_as(p)
            p.grad = view if on_host else view.to(self._device)

    def _materialize_optimizer_state(self) -> None:
        """Create the optimizer's lazily built state (momentum buffers, step counters) now,
        zeroed, so that checkpoints and a joiner's state transfer see every array from the
        first step: one step with zero gradients at learning rate 0, then every state
        tensor set to 0 (a zero buffer is what the first real step starts from)."""
        saved = [group["lr"] for group in self.optimizer.param_groups]
        for group in self.optimizer.param_groups:
            group["lr"] = 0.0
        self._flat.zero_()
        self.optimizer.step()
        for group, lr in zip(self.optimizer.param_groups, saved, strict=True):
            group["lr"] = lr
        with torch.no_grad():
            for state in self.optimizer.state.values():
                for key, value in state.items():
                    if isinstance(value, torch.Tensor):
                        value.zero_()
                    elif isinstance(value, (int, float)) and not isinstance(value, bool):
                        state[key] = type(value)(0)
        self._point_grads_at_buffer()  # an optimizer may have replaced a .grad

    # -- the overlap ---------------------------------------------------------------------
    def _hook(self, index: int) -> Callable[[torch.Tensor], None]:
        def ready(_param: torch.Tensor) -> None:
            if not self._armed:
                return
            bucket = self._bucket_of[index]
            self._pending[bucket] -= 1
            if self._pending[bucket] == 0:
                self._launch_ready()

        return ready

    def _launch_ready(self) -> None:
        """Start, in buffer order, every complete bucket but the last."""
        comm = self.session.communicator if self.session is not None else None
        while self._launched < len(self._buckets) - 1 and self._pending[self._launched] == 0:
            start, end = self._buckets[self._launched]
            self._launch(comm, start, end)
            self._launched += 1

    def _launch(self, comm: Any, start: int, end: int) -> None:
        if self._on_device is not None:  # reduced where it is (agent/runtime/torch_grads.py)
            if self._monitor:
                self._local_sq += self._on_device.squared_norm_later(start, end)  # type: ignore[assignment]
            self._handles.append(comm.allreduce_async(self._on_device.bucket(start, end), op="sum"))
            return
        part = self._flat_np[start:end]
        if self._device.type != "cpu":
            self._gather_grads(start, end)
        if self._monitor:
            self._local_sq += _squared_norm(part)
        self._handles.append(comm.allreduce_async(part, op="sum"))

    def _gather_grads(self, start: int, end: int) -> None:
        """(A model on a GPU.) Copy the device gradients of [start, end) to the host buffer."""
        if self._on_device is not None:
            self._on_device.to_host(self._flat, start, end)
            return
        with torch.no_grad():
            for p, offset, size in zip(self._params, self._offsets, self._sizes, strict=True):
                if offset >= start and offset + size <= end and p.grad is not None:
                    self._flat[offset : offset + size].copy_(p.grad.reshape(-1))

    def _scatter_grads(self, start: int = 0, end: int | None = None) -> None:
        """(A model on a GPU.) Copy the reduced host gradients back to the device."""
        if self._on_device is not None:
            self._on_device.from_host(self._flat, start, self._n if end is None else end)
            return
        with torch.no_grad():
            for p, offset, size in zip(self._params, self._offsets, self._sizes, strict=True):
                p.grad.copy_(self._flat[offset : offset + size].view_as(p))

    def _wait_all(self) -> BaseException | None:
        """Wait for every bucket started this step; the first error, if any."""
        error: BaseException | None = None
        for handle in self._handles:
            try:
                handle.wait()
            except BaseException as exc:  # noqa: BLE001 - the step raises it below
                error = error or exc
        self._handles = []
        return error

    # -- steps ---------------------------------------------------------------------------
    def _forward_backward(self, x: np.ndarray, y: np.ndarray, global_batch: int) -> None:
        """Gradients of sum(loss) / global_batch into the buffer, and the loss sum and
        correct count after them."""
        self._flat.zero_()
        if self._on_device is not None:
            self._on_device.zero_()
        elif self._device.type != "cpu":
            for p in self._params:
                p.grad.zero_()
        if len(x) == 0:  # an empty share: zero gradients, zero counters
            return
        if not self.model.training:  # train() walks every submodule: only when needed
            self.model.train()
        xs = torch.from_numpy(x)
        ys = torch.from_numpy(y.astype(np.int64, copy=False))
        if self._device.type != "cpu":
            xs = xs.to(self._device)
            ys = ys.to(self._device)
        logits = self.model(xs)
        loss_sum = self._loss_sum(logits, ys)
        # Backward from 1/B instead of from 1 through a division node: the gradients of
        # sum(loss) / B, bit for bit (1/B is the float32 quotient the division's backward
        # computes), one autograd node and one op fewer per step.
        inverse = self._inverse_batch.get(global_batch)
        if inverse is None or inverse.device != loss_sum.device:
            inverse = torch.ones((), device=loss_sum.device) / global_batch
            self._inverse_batch = {global_batch: inverse}
        loss_sum.backward(inverse)
        with torch.no_grad():
            if self._device.type == "cpu":
                # Through NumPy: a third of the PyTorch ops' cost on a small model.
                self._flat_np[self._n] = loss_sum.item()
                predicted = logits.detach().numpy().argmax(axis=1)
                self._flat_np[self._n + 1] = np.count_nonzero(predicted == y)
            else:  # the loss sum and the correct count into the buffer in one op
                correct = (logits.argmax(dim=1) == ys).sum()
                self._scalars.copy_(torch.stack((loss_sum.detach(), correct.to(torch.float32))))

    def gradients(self, x: np.ndarray, y: np.ndarray, global_batch: int) -> np.ndarray:
        self._ensure_buffer(self._extra if self._extra >= 0 else 0)
        self._forward_backward(x, y, global_batch)
        if self._apart():
            self._gather_grads(0, self._n)
        return self._flat_np[: self._n + 3].copy()

    def apply_gradients(self, gradients: np.ndarray) -> None:
        if gradients.size != self._n:
            raise ValueError(f"expected {self._n} gradient values, got {gradients.size}")
        self._flat_np[: self._n] = gradients
        if self._apart():
            self._scatter_grads()
        self.optimizer.step()

    def fused_step(
        self,
        x: np.ndarray,
        y: np.ndarray,
        global_batch: int,
        local_scale_sq: float,
        extra_slots: int,
        monitor: bool,
        distributed: bool,
    ) -> np.ndarray:
        self._ensure_buffer(extra_slots)
        n = self._n
        comm = self.session.communicator if self.session is not None else None
        overlap = distributed and comm is not None and len(self._buckets) > 1
        self._monitor, self._local_sq, self._handles = monitor, 0.0, []
        if overlap:
            self._pending = [0] * len(self._buckets)
            for bucket in self._bucket_of:
                self._pending[bucket] += 1
            self._launched = 0
            self._armed = len(x) > 0
        try:
            self._forward_backward(x, y, global_batch)
        finally:
            self._armed = False
        if overlap:
            # Buckets whose hooks did not fire (an empty share, unused parameters) go now,
            # still in buffer order.
            for bucket in range(self._launched, len(self._buckets) - 1):
                self._pending[bucket] = 0
            self._launch_ready()
        last_start = self._buckets[-1][0] if overlap else 0
        if self._apart():
            self._gather_grads(last_start, n)
        if monitor:
            rest = self._flat_np[last_start:n]
            self._flat_np[n + 2] = float(self._local_sq + _squared_norm(rest)) * local_scale_sq
        if distributed:
            part = self._flat_np[last_start:]
            try:
                reduced = self._allreduce(part)
            except BaseException:
                self._wait_all()  # nothing may write the buffer once the step is left
                raise
            error = self._wait_all()
            if error is not None:
                raise error
            if reduced is not part:  # reduced in a copy: take the sums back
                part[:] = reduced
        if self._on_device is not None:  # the other buckets were reduced on the device
            self._scatter_grads(last_start, n)
            big_sq = self._on_device.squared_norm(0, n) if monitor else 0.0
        else:
            big_sq = _squared_norm(self._flat_np[:n]) if monitor else 0.0
            if self._device.type != "cpu":
                self._scatter_grads()
        self.optimizer.step()
        tail = self._flat_np[n : n + 3]
        return np.array([tail[0], tail[1], tail[2], big_sq], np.float32)

    def checksum(self) -> float:
        with torch.no_grad():
            return float(sum(p.detach().double().sum().item() for p in self._params))

    # -- state as NumPy ------------------------------------------------------------------
    def weights(self) -> np.ndarray:
        with torch.no_grad():
            return torch.cat([p.detach().reshape(-1).cpu() for p in self._params]).numpy()

    def set_weights(self, flat: np.ndarray) -> None:
        if flat.size != self._n:
            raise ValueError(f"expected {self._n} weights, got {flat.size}")
        source = torch.from_numpy(np.ascontiguousarray(flat, np.float32))
        with torch.no_grad():
            for p, offset, size in zip(self._params, self._offsets, self._sizes, strict=True):
                p.copy_(source[offset : offset + size].view_as(p))

    def state(self) -> list[np.ndarray]:
        """The module's ``state_dict`` values (parameters and buffers, in its order), then
        the optimizer's state tensors (by parameter, then by key)."""
        model = [t.detach().cpu().numpy().copy() for t in self.model.state_dict().values()]
        return model + self.optimizer_state()

    def load_state(self, arrays: list[np.ndarray]) -> None:
        names = list(self.model.state_dict())
        if len(arrays) < len(names):
            raise ValueError(f"expected at least {len(names)} arrays, got {len(arrays)}")
        current = self.model.state_dict()
        self.model.load_state_dict(
            {
                name: torch.from_numpy(np.asarray(a).copy()).to(current[name].dtype)
                for name, a in zip(names, arrays[: len(names)], strict=True)
            }
        )
        self.load_optimizer_state(arrays[len(names) :])

    def _optimizer_slots(self) -> list[tuple[dict, str]]:
        """Where each optimizer state value lives: (the parameter's state, the key)."""
        slots = []
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                state = self.optimizer.state.get(p, {})
                slots.extend((state, key) for key in sorted(state))
        return slots

    def optimizer_state(self) -> list[np.ndarray]:
        out = []
        for state, key in self._optimizer_slots():
            value = state[key]
            if isinstance(value, torch.Tensor):
                out.append(value.detach().cpu().numpy().copy())
            else:
                out.append(np.asarray(value, np.float64))
        return out

    def load_optimizer_state(self, arrays: list[np.ndarray]) -> None:
        slots = self._optimizer_slots()
        if len(arrays) != len(slots):
            raise ValueError(
                f"expected {len(slots)} optimizer state arrays, got {len(arrays)}: every "
                "worker must build the same model and optimizer"
            )
        with torch.no_grad():
            for (state, key), value in zip(slots, arrays, strict=True):
                current = state[key]
                if isinstance(current, torch.Tensor):
                    current.copy_(torch.from_numpy(np.asarray(value).copy()).reshape(current.shape))
                else:
                    state[key] = type(current)(np.asarray(value).item())

    def set_learning_rate(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr


class Trainer(trainer.Trainer):
    """Synchronous data-parallel training of an ``nn.Module`` with live knobs (batch
    size, learning rate, strategy, topology, membership), as
    :class:`agent.runtime.tf.Trainer` does for Keras.

    ``loss_fn(logits, labels)`` returns per-sample losses (default: cross-entropy);
    hyper-parameter ``bucket_mb`` sets the gradient bucket size (0: one bucket)."""

    def __init__(
        self,
        session: Session,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        *,
        seed: int = 0,
    ):
        self.model = model
        self.optimizer = optimizer
        bucket_mb = float(session.hyperparameters.get("bucket_mb", DEFAULT_BUCKET_BYTES / 2**20))
        if bucket_mb < 0:
            raise ValueError(f"bucket_mb must be 0 (one bucket) or more, got {bucket_mb}")
        adapter = TorchModel(
            model, optimizer, loss_fn, session=session, bucket_bytes=int(bucket_mb * 2**20)
        )
        super().__init__(session, adapter, seed=seed)


def configure_torch_threads(threads: int = 1) -> None:
    """Keep each worker to ``threads`` CPU threads so co-located workers do not fight."""
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(threads)
    except RuntimeError:  # only allowed before the first parallel work; then leave it
        pass


# -- building blocks for a custom training step ------------------------------------------
def broadcast_parameters(
    tensors: torch.nn.Module | Iterable[torch.Tensor], session: Session, root: int = 0
) -> None:
    """Give every worker rank ``root``'s values of ``tensors`` (a module: its
    ``state_dict``, parameters and buffers), one native broadcast per dtype."""
    comm = session.communicator
    if comm is None:
        return
    items = (
        list(tensors.state_dict().values())
        if isinstance(tensors, torch.nn.Module)
        else list(tensors)
    )
    groups: dict[torch.dtype, list[torch.Tensor]] = {}
    for t in items:
        groups.setdefault(t.dtype, []).append(t)
    with torch.no_grad():
        for group in groups.values():
            flat = torch.cat([t.detach().reshape(-1).cpu() for t in group]).numpy().copy()
            comm.broadcast(flat, root=root)
            offset = 0
            for t in group:
                n = t.numel()
                t.copy_(torch.from_numpy(flat[offset : offset + n]).view_as(t))
                offset += n


def allreduce_gradients(
    parameters: Iterable[torch.Tensor], session: Session, op: str = "mean"
) -> None:
    """Average (or sum, …) the ``.grad`` of ``parameters`` across workers in place, fused
    into one native allreduce per dtype."""
    comm = session.communicator
    if comm is None:
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    groups: dict[torch.dtype, list[torch.Tensor]] = {}
    for g in grads:
        groups.setdefault(g.dtype, []).append(g)
    with torch.no_grad():
        for group in groups.values():
            flat = torch.cat([g.reshape(-1).cpu() for g in group]).numpy().copy()
            comm.allreduce(flat, op=op)
            offset = 0
            for g in group:
                n = g.numel()
                g.copy_(torch.from_numpy(flat[offset : offset + n]).view_as(g))
                offset += n


class DistributedOptimizer:
    """A ``torch.optim`` optimizer whose ``step`` first averages the gradients across the
    job's workers (S-SGD), for scripts that write their own training step instead of
    using :class:`Trainer`::

        optimizer = DistributedOptimizer(torch.optim.SGD(model.parameters(), 0.05), session)
        broadcast_parameters(model, session)
        for x, y in my_shard_of_each_global_batch:
            optimizer.zero_grad()
            loss_fn(model(x), y).backward()
            optimizer.step()

    Each worker feeds its own shard of the global batch (``GlobalBatchSampler.shard``)
    and computes the mean loss of its shard; with equal shards the averaged gradient is
    the global batch's. Live commands, elasticity and monitors are :class:`Trainer`'s;
    this wrapper only synchronises gradients. Every other attribute is the wrapped
    optimizer's."""

    def __init__(self, optimizer: torch.optim.Optimizer, session: Session):
        self._optimizer = optimizer
        self._session = session

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        params = [p for group in self._optimizer.param_groups for p in group["params"]]
        allreduce_gradients(params, self._session)
        return self._optimizer.step(closure)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._optimizer, name)


def evaluate_accuracy(model: torch.nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    """The share of ``x`` that ``model`` classifies as ``y`` (in eval mode, no gradients)."""
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        with torch.no_grad():
            logits = model(torch.from_numpy(np.asarray(x, np.float32)).to(device))
        return float((logits.argmax(dim=1).cpu().numpy() == np.asarray(y)).mean())
    finally:
        model.train(was_training)
