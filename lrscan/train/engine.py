"""M runs of one model advanced in lock-step, each with its own learning rate (SPEC §2).

Every parameter and float buffer is held stacked along a leading run axis, and a batched
engine computes all its runs in one pass: through the entry's ``forward_batched`` where it has
one (the synthetic MLP), otherwise through ``torch.func.vmap`` over ``functional_call`` of the
module — parameters and BatchNorm buffers stacked per run, BatchNorm in train mode normalising
each run with its own batch and updating its own running statistics, dropout drawn
independently per run. The run-by-run path (``batched=False``: the module called once per run
on views of the same stacked tensors) is the reference that both are tested against; all paths
share the update, the projection and the evaluation.

The trained parameters of all runs live side by side in one (M, P) buffer (:attr:`Engine.trained`;
``Engine.params`` are views into it by name), and the step flattens the gradients into one
buffer too, so the update (:mod:`lrscan.train.updates`) — the study's projected SGD on the
sphere for SI models, or ordinary SGD / Adam for the practical baselines — and the gradient norm
are a few operations on whole buffers. The update's state is flat the same way, so a snapshot
of :meth:`Engine.state` continues a stage exactly. The flat state vector's
layout, norms and projection are :mod:`lrscan.train.flat`.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap
from torch.nn import functional as F

from lrscan.models import ModelEntry
from lrscan.train.flat import batch_norms, layout, si_norm
from lrscan.train.updates import initial_state, make_update, row_norm

# Samples taken at once by the passes over a whole set — BatchNorm recomputation, sharpness,
# and scoring on an accelerator: the synthetic sets in one pass.
EVAL_SAMPLES = 4096
# Samples scored at once by Engine.evaluate on a CPU: few enough that a chunk's activations stay
# in cache (128 MLP runs x 256 samples x width 32 floats = 4 MB; their forward pass over 4,096
# samples took 1.65x less CPU time in blocks of 256 than in one, on the 2-core development
# machine). The blocks depend on nothing but the device, so a run is scored alike alone and in
# a batch of any size.
CPU_EVAL_SAMPLES = 256
# Runs of a vmapped model (one without ``forward_batched``: images) that one pass scores,
# recomputes or differentiates together: their activations are per run, so a pass of them holds
# as many images as one of EVAL_SAMPLES (CPU_EVAL_SAMPLES) samples of a single run.
VMAP_RUNS = 8


def eval_samples(device: torch.device) -> int:
    """Samples :meth:`Engine.evaluate` scores at once on ``device``."""
    return CPU_EVAL_SAMPLES if torch.device(device).type == "cpu" else EVAL_SAMPLES


def loss_and_correct(logits: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Per-sample loss and correctness for logits (..., C) and labels (...).

    A single logit means binary classification with a sigmoid, as in the synthetic setup.
    """
    if logits.shape[-1] == 1:
        z = logits[..., 0]
        return F.binary_cross_entropy_with_logits(z, y.to(z.dtype), reduction="none"), (z > 0) == (y == 1)
    flat = logits.reshape(-1, logits.shape[-1])
    loss = F.cross_entropy(flat.float(), y.reshape(-1), reduction="none").reshape(y.shape)
    return loss, logits.argmax(-1) == y


class StepStats(NamedTuple):
    """What one training step measured for each run, (M,) float32 each."""

    grad_norm: Tensor  # L2 norm of the gradient over the trained group (the SI group on a sphere)
    loss: Tensor  # mean loss of the run's mini-batch, in the step's own (train-mode) forward pass
    acc: Tensor  # accuracy on that mini-batch, from the same logits


def derive_seed(values: Sequence[int]) -> int:
    """A 63-bit seed that depends on nothing but ``values`` (non-negative integers), through
    numpy's SeedSequence: the one way the trainer turns its keys into seeds."""
    return int(np.random.SeedSequence([int(v) for v in values]).generate_state(2, np.uint64)[0] >> 1)


def stack_seed(seeds: Sequence[int]) -> int:
    """One 63-bit seed for the random draws of a vmapped stack of runs, from the runs' own
    per-step seeds (:func:`lrscan.train.loop.step_key`): the same runs at the same step draw
    the same masks, so a resumed stage repeats them."""
    return derive_seed(seeds)


def gather(data_x: Tensor, data_y: Tensor, which: Tensor, idx: Tensor) -> tuple[Tensor, Tensor]:
    """The runs' batches: samples ``idx[m]`` (M, B) of dataset ``which[m]`` of ``data_x`` / ``data_y``."""
    rows = which[:, None]
    return data_x[rows, idx], data_y[rows, idx]


@contextlib.contextmanager
def tf32_scope(allow: bool):
    """TF32 matrix products and convolutions allowed (or not) inside the block, and torch's
    settings as they were after it: the engine's choice does not leak into the caller's code."""
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    before = matmul.allow_tf32, cudnn.allow_tf32
    matmul.allow_tf32 = cudnn.allow_tf32 = allow
    try:
        yield
    finally:
        matmul.allow_tf32, cudnn.allow_tf32 = before


def _in_scope(method: Callable) -> Callable:
    """Run an :class:`Engine` method under its backend settings (:func:`tf32_scope`)."""
    @functools.wraps(method)
    def scoped(self, *args, **kwargs):
        with tf32_scope(self.tf32):
            return method(self, *args, **kwargs)
    return scoped


class Engine:
    """The state of M runs of one model, with a per-run learning rate.

    Parameters
    ----------
    entry, module
        The model entry and one instance of its module (used for shapes and, unless the
        entry has ``forward_batched``, as the function applied to each run's parameters).
    flat
        Initial state, (M, P), in the order of :func:`layout`.
    radius
        The sphere's radius ρ; the SGD step is ``lr = ELR * ρ²``.  ``None`` for a model not
        trained on a sphere (its learning rate is the grid value itself).
    batched
        Compute all runs in one pass (``forward_batched``, or vmap over the module) rather
        than calling the module once per run.
    compile
        Compile with ``torch.compile`` (faster for long stages; the first call of each shape
        pays the compilation): the whole step and the evaluation of a ``forward_batched``
        model, one run's forward pass on the run-by-run path; nothing on the vmapped one.
    options
        The model's options (the update rule reads its hyperparameters from them).
    precision
        ``"fp32"`` or ``"bf16"`` (autocast of the forward pass; weights stay float32).
    tf32
        Let matrix products and convolutions run in TF32 while the engine steps, scores or
        recomputes statistics (:func:`tf32_scope`); torch's global settings are as before
        once each call returns.
    channels_last
        Hold each run's convolution weights, and feed each run's images, in the channels-last
        memory format (what GPU convolution kernels run fastest on); the values are the same.
        Run-by-run path only.
        Not on a CPU: there torch 2.14 computes the weight gradient of a strided 1x1
        convolution (the ResNet's shortcut) on channels-last input wrongly, and differently
        from call to call.
    """

    def __init__(self, entry: ModelEntry, module: nn.Module, flat: Tensor, radius: float | None, *,
                 batched: bool, compile: bool = False, options: Mapping[str, Any] | None = None,
                 precision: str = "fp32", tf32: bool = False, channels_last: bool = False):
        self.entry, self.module, self.radius, self.batched = entry, module, radius, batched
        # Batched without a batched forward of its own: vmap over the module.
        self.vmapped = batched and entry.forward_batched is None
        if channels_last and self.vmapped:
            raise ValueError("channels_last applies to the run-by-run path (vmap stacks the runs' "
                             "convolutions into one grouped convolution of its own layout)")
        self.layers = layout(entry, module)
        if entry.update == "sphere" and any(l.trainable != l.si for l in self.layers):
            raise ValueError("the sphere trainer needs the trainable parameters to be exactly the SI group")
        self.n_runs = flat.shape[0]
        trained: dict[str, Tensor] = {}
        self.frozen: dict[str, Tensor] = {}
        self.buffers: dict[str, Tensor] = {}
        for layer in self.layers:
            p = flat[:, layer.start : layer.stop].reshape(self.n_runs, *layer.shape)
            if layer.trainable:
                trained[layer.name] = p  # flatten below copies it into the trained buffer
            else:
                (self.buffers if layer.buffer else self.frozen)[layer.name] = p.clone()
        self.channels_last = channels_last
        self.frozen = self._laid_out(self.frozen)
        # The trained tensors live side by side in one (M, P) buffer, ``trained``: the update
        # is a few operations on it; ``params`` are views into it, by name.
        self._shapes = {name: t.shape[1:] for name, t in trained.items()}
        self.trained = self.flatten(trained)
        self.group = entry.norm_group
        self.lr_scale = radius**2 if entry.update == "sphere" else 1.0
        self._update = make_update(entry, options or {}, radius)
        self.opt_state = initial_state(entry.update, self.trained, options or {})
        self.autocast = precision == "bf16"
        self.tf32 = tf32
        self._seeds: Sequence[int] | None = None
        # A forward_batched model compiles the whole step; a run-by-run one compiles one run's
        # forward pass (its step loops over runs in Python, which dynamo would unroll). A vmapped
        # step is not compiled: torch 2.14 compiles vmap's train-mode BatchNorm step (in-place
        # updates of the stacked statistics under torch.func.grad) to other weights — up to 1.8
        # apart from eager ones after 6 steps of the SI ConvNet — and takes minutes doing it.
        whole = compile and batched and not self.vmapped
        self._whole = whole
        self._step = torch.compile(self._step_all, dynamic=False) if whole else self._step_all
        self._step_on = torch.compile(self._gather_step, dynamic=False) if whole else None
        self._eval = torch.compile(self._eval_chunk, dynamic=False) if whole else self._eval_chunk
        self._run_logits = torch.compile(self._one_run_logits, dynamic=False) if compile else self._one_run_logits
        # "different": dropout masks drawn independently for every run of the stack.
        self._vmapped = vmap(self._module_call, randomness="different")

    @property
    def seeded(self) -> bool:
        """Whether a step takes its runs' per-step seeds: a model called through its module
        (vmapped or run by run) may draw at random (dropout), a ``forward_batched`` one does not."""
        return self.vmapped or not self.batched

    # ---- forward passes ------------------------------------------------------------------

    def _amp(self, device: torch.device):
        if self.autocast:
            return torch.autocast(device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def logits(self, params: dict[str, Tensor], x: Tensor) -> Tensor:
        """Logits (m, B, C) of m runs with (stacked) ``params`` — trained and frozen
        parameters, and buffers — on inputs x (m, B, ...)."""
        if self.vmapped:
            if self._seeds is not None:  # dropout: one draw for the stack, different in each run
                torch.manual_seed(stack_seed(self._seeds))
            with self._amp(x.device):
                return self._vmapped(params, x).float()
        if self.batched:
            with self._amp(x.device):
                return self.entry.forward_batched(self.module, params, x).float()
        out = []
        for i in range(x.shape[0]):
            if self._seeds is not None:  # dropout and the like draw from the global generator
                torch.manual_seed(self._seeds[i])
            out.append(self._run_logits({n: p[i] for n, p in params.items()}, x[i]))
        # The loss is taken over the stack, as on the batched path: elementwise kernels can
        # round a tensor's tail differently, so per-run losses would not match it bit for bit.
        return torch.stack(out)

    # ---- the flat buffer of trained tensors -----------------------------------------------

    def _last(self, shape) -> bool:
        """Whether a trained tensor of this (per-run) shape is held channels-last."""
        return self.channels_last and len(shape) == 4

    def flatten(self, tensors: Mapping[str, Tensor]) -> Tensor:
        """Stacked trained tensors by name (M, ...) side by side in one (M, P) buffer, in the
        engine's order (a channels-last convolution weight in its memory order)."""
        rows = []
        for name, shape in self._shapes.items():
            t = tensors[name]
            rows.append((t.permute(0, 1, 3, 4, 2) if self._last(shape) else t).reshape(t.shape[0], -1))
        return torch.cat(rows, 1)

    def views(self, flat: Tensor) -> dict[str, Tensor]:
        """The trained tensors by name, (M, ...) views into a buffer ``flat`` (M, P) of :meth:`flatten`."""
        out = {}
        sizes = [int(np.prod(shape)) for shape in self._shapes.values()]
        for (name, shape), part in zip(self._shapes.items(), flat.split(sizes, 1)):
            if self._last(shape):
                o, i, kh, kw = shape
                out[name] = part.view(-1, o, kh, kw, i).permute(0, 1, 4, 2, 3)
            else:
                out[name] = part.view(-1, *shape)
        return out

    @property
    def params(self) -> dict[str, Tensor]:
        """The trained parameters by name, (M, ...) each: views into :attr:`trained`."""
        return self.views(self.trained)

    def _laid_out(self, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
        """``tensors`` with each stacked convolution weight (M, O, I, kh, kw) laid out so that
        every run's (O, I, kh, kw) is channels-last, when the engine is; otherwise as they are."""
        if not self.channels_last:
            return tensors
        return {n: t.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3) if t.dim() == 5 else t
                for n, t in tensors.items()}

    def _module_call(self, params: dict[str, Tensor], x: Tensor) -> Tensor:
        return functional_call(self.module, params, (x,))

    def _one_run_logits(self, params: dict[str, Tensor], x: Tensor) -> Tensor:
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with self._amp(x.device):
            return functional_call(self.module, params, (x,)).float()

    def _loss(self, params: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        return self._loss_and_scores(params, x, y)[0]

    def _loss_and_scores(self, params: dict[str, Tensor], x: Tensor, y: Tensor):
        """The summed loss to differentiate, and each run's batch loss and accuracy (M,) as aux."""
        loss, correct = loss_and_correct(self.logits({**params, **self.frozen, **self.buffers}, x), y)
        # Summing the runs' mean losses keeps each run's gradient its own.
        per_run = loss.mean(1)
        return per_run.sum(), (per_run.detach(), correct.float().mean(1))

    # ---- training ------------------------------------------------------------------------

    def _grads(self, params: dict[str, Tensor], x: Tensor, y: Tensor):
        """The gradients by name, and the runs' batch (loss, accuracy)."""
        if self._whole:  # dynamo traces the functional form
            return torch.func.grad(self._loss_and_scores, has_aux=True)(params, x, y)
        # Eager autograd has less per-step overhead than torch.func.grad.
        leaves = {n: p.detach().requires_grad_() for n, p in params.items()}
        total, scores = self._loss_and_scores(leaves, x, y)
        return dict(zip(leaves, torch.autograd.grad(total, list(leaves.values())))), scores

    def _step_all(self, trained, state, x, y, lr):
        grads, (loss, acc) = self._grads(self.views(trained), x, y)
        flat = self.flatten(grads)  # one (M, P) gradient: the update, projection and norm act on it whole
        trained, state = self._update(trained, flat, state, lr)
        return trained, state, row_norm(flat), loss, acc

    def _gather_step(self, trained, state, data_x, data_y, which, idx, lr):
        return self._step_all(trained, state, *gather(data_x, data_y, which, idx), lr)

    @_in_scope
    def step_on(self, data_x: Tensor, data_y: Tensor, which: Tensor, idx: Tensor, elr: Tensor,
                seeds: Sequence[int] | None = None) -> StepStats:
        """:meth:`step` on a batch given by position: run ``m`` steps on samples ``idx[m]``
        (M, B) of dataset ``which[m]`` of ``data_x`` (D, N, ...) and ``data_y`` (D, N).

        A compiled batched engine gathers the batch inside its compiled step (one call per
        step, no eager indexing); any other gathers it first and calls :meth:`step`.
        """
        if self._step_on is None:
            return self.step(*gather(data_x, data_y, which, idx), elr, seeds)
        self.trained, self.opt_state, grad_norm, loss, acc = self._step_on(
            self.trained, self.opt_state, data_x, data_y, which, idx, elr * self.lr_scale)
        return StepStats(grad_norm.float(), loss.float(), acc.float())

    @_in_scope
    def step(self, x: Tensor, y: Tensor, elr: Tensor, seeds: Sequence[int] | None = None) -> StepStats:
        """One step of every run on its own batch (x (M, B, ...), y (M, B)).

        A model called through its module is in train mode (BatchNorm normalises each run
        with its own batch and updates the run's own running statistics, slices of the stacked
        buffers). ``seeds`` (one per run) seed the global generator: run by run, before each
        run's forward pass, so a run draws alike in a batch and alone; vmapped, once for the
        stack (:func:`stack_seed`), each run drawing its own masks, so a stage repeats its
        draws (resume) but a run's dropout depends on the runs it is stacked with.  Returns
        each run's gradient norm and the loss and accuracy of its batch as this step's forward
        pass computed them (before the update; train-mode BatchNorm where the model has it),
        as a :class:`StepStats`.
        """
        if self.seeded:
            self.module.train()
        self._seeds = seeds
        try:
            self.trained, self.opt_state, grad_norm, loss, acc = self._step(self.trained, self.opt_state, x, y,
                                                                            elr * self.lr_scale)
        finally:
            self._seeds = None
        return StepStats(grad_norm.float(), loss.float(), acc.float())

    # ---- evaluation ----------------------------------------------------------------------

    def _eval_chunk(self, params: dict[str, Tensor], x: Tensor, y: Tensor):
        loss, correct = loss_and_correct(self.logits(params, x), y)
        return loss.mean(1), correct.float().mean(1)

    def _all(self) -> dict[str, Tensor]:
        return {**self.params, **self.frozen, **self.buffers}

    @_in_scope
    @torch.no_grad()
    def evaluate(self, x: Tensor, y: Tensor, which: Tensor, chunk: int,
                 samples: int | None = None) -> tuple[Tensor, Tensor]:
        """Mean loss and accuracy of each run on its dataset, x (D, N, ...), y (D, N).

        Run ``m`` is evaluated on dataset ``which[m]``.  Runs go through in equal chunks of at
        most ``chunk`` (the last one padded to the same shape, for one compilation)
        and samples in blocks of ``samples`` (default :func:`eval_samples` of the device). A
        model called through its module is in eval mode (BatchNorm uses each run's running
        statistics): vmapped, :data:`VMAP_RUNS` runs at a time on blocks that many times
        smaller (a pass holds as many images as one run's block); run by run, one by one.
        """
        if self.seeded:
            self.module.eval()
        if samples is None:
            samples = eval_samples(x.device) // (VMAP_RUNS if self.vmapped else 1)
        if self.vmapped:
            chunk = min(chunk, VMAP_RUNS)
        if not self.batched:
            chunk = 1  # runs go one by one anyway: no padding of the last chunk
        # As few chunks as ``chunk`` allows, of equal size: 276 runs in chunks of at most 128 go
        # as 3 x 92, not 128 + 128 + 20 padded to 128 (108 runs' work thrown away).
        chunk = -(-self.n_runs // -(-self.n_runs // chunk))
        n = x.shape[1]
        losses, accs = [], []
        for start in range(0, self.n_runs, chunk):
            if start + chunk <= self.n_runs:
                rows = slice(start, start + chunk)  # views: no copies
            else:  # the last chunk repeats the last run to keep one shape (one compilation)
                rows = torch.arange(start, start + chunk, device=which.device).clamp(max=self.n_runs - 1)
            idx = which[rows]
            # One dataset for the whole chunk (always so with one data seed): broadcast it rather
            # than copy it per run.
            shared = int(idx[0]) if bool((idx == idx[0]).all()) else None
            params = {name: p[rows] for name, p in self._all().items()}
            loss = torch.zeros(chunk, dtype=torch.float64, device=x.device)
            acc = torch.zeros_like(loss)
            for first in range(0, n, samples):
                block = slice(first, min(first + samples, n))
                if shared is not None:
                    xs, ys = x[shared, block].expand(chunk, -1, *x.shape[2:]), y[shared, block].expand(chunk, -1)
                else:
                    xs, ys = x[idx, block], y[idx, block]
                block_loss, block_acc = self._eval(params, xs, ys)
                # float32 means weighted in float64: a single block gives its mean exactly.
                loss += block_loss.double() * xs.shape[1]
                acc += block_acc.double() * xs.shape[1]
            losses.append((loss / n).float())
            accs.append((acc / n).float())
        return torch.cat(losses)[: self.n_runs], torch.cat(accs)[: self.n_runs]

    @_in_scope
    @torch.no_grad()
    def evaluate_train_mode(self, x: Tensor, y: Tensor, which: Tensor, batch_size: int) -> tuple[Tensor, Tensor]:
        """Mean loss and accuracy of each run on its dataset with BatchNorm in train mode.

        As the study measures the train error of BatchNorm models: every run sees its set
        ``x[which[m]]`` (D, N, ...) in order, in batches of ``batch_size`` that BatchNorm
        normalises with their own statistics.  The incomplete last batch is left out, as the
        training loader drops it (a batch of another size is another normalisation).  Running
        statistics are not changed: each run's are copied before the passes.  Other layers
        (dropout) stay in eval mode.

        Parameters
        ----------
        x, y
            Inputs (D, N, ...) and labels (D, N), one set per data seed.
        which
            The set of each run, (M,).
        batch_size
            The training batch size; at most N.

        Returns
        -------
        loss, acc : Tensor
            (M,) float32 each, means over the ``(N // batch_size) * batch_size`` samples.
        """
        which = which.to(x.device)
        n = (x.shape[1] // batch_size) * batch_size
        if n == 0:
            raise ValueError(f"batch_size = {batch_size} exceeds the {x.shape[1]} samples")
        self.module.eval()
        for m in batch_norms(self.module):
            m.train()
        # The module's own integer buffers (num_batches_tracked) would count these passes.
        counters = {name: b for name, b in self.module.named_buffers() if name not in self.buffers}
        loss = torch.zeros(self.n_runs, dtype=torch.float64, device=x.device)
        acc = torch.zeros_like(loss)
        for rows in self.groups(batch_size):
            # Copies: a train-mode BatchNorm writes its running statistics into the buffers it is given.
            params = {**{name: p[rows] for name, p in {**self.params, **self.frozen}.items()},
                      **{name: b[rows] for name, b in self.buffers.items()},
                      **{name: b.expand(len(rows)).clone() for name, b in counters.items()}}
            sets = which[rows]
            for start in range(0, n, batch_size):
                batch = slice(start, start + batch_size)
                batch_loss, correct = loss_and_correct(self.logits(params, x[sets, batch]), y[sets, batch])
                loss[rows] += batch_loss.double().sum(1)
                acc[rows] += correct.double().sum(1)
        return (loss / n).float(), (acc / n).float()

    def groups(self, per_run: int) -> list[Tensor]:
        """The runs, as index tensors, in the groups that one pass of ``per_run`` samples each
        takes together: all of them for a ``forward_batched`` model; vmapped, as many as fit
        :data:`EVAL_SAMPLES` images (at most :data:`VMAP_RUNS`, at least one); run by run, one."""
        if self.vmapped:
            size = max(1, min(VMAP_RUNS, EVAL_SAMPLES // max(1, per_run)))
        else:
            size = self.n_runs if self.batched else 1
        return list(torch.arange(self.n_runs, device=self.trained.device).split(size))

    @_in_scope
    @torch.no_grad()
    def recompute_bn(self, x: Tensor, which: Tensor, batch_size: int = EVAL_SAMPLES,
                     y: Tensor | None = None) -> tuple[Tensor, Tensor] | None:
        """Replace every run's BatchNorm statistics by their values over its training set
        ``x[which[m]]`` (D, N, ...), seen in order in batches of ``batch_size`` (train-mode
        forward passes with a cumulative average, as ``torch.optim.swa_utils.update_bn``).
        The default takes sets of up to 4,096 samples in one pass: their exact statistics,
        and few calls. Vmapped, the runs go through in groups (:meth:`groups`).

        Constructed points — SWA averages, points on a path — need this before they are
        scored (SPEC §5).  A model without BatchNorm is left as it is (and ``None`` returned).

        With the labels ``y`` (D, N), the passes also score each run: the mean loss and
        accuracy over the complete batches, which is :meth:`evaluate_train_mode` of the
        same batches for a model whose only train-mode layers are BatchNorm (this pass also
        puts dropout in train mode, as ``update_bn`` does) — one pass over the training set
        instead of two.
        """
        which = which.to(x.device)
        norms = batch_norms(self.module)
        if not norms or not self.buffers:
            return None
        if y is not None and batch_size > x.shape[1]:
            raise ValueError(f"batch_size = {batch_size} exceeds the {x.shape[1]} samples")
        n_scored = (x.shape[1] // batch_size) * batch_size  # the complete batches, which y scores
        loss = torch.zeros(self.n_runs, dtype=torch.float64, device=x.device)
        acc = torch.zeros_like(loss)
        momenta = [m.momentum for m in norms]
        self.module.train()
        try:
            for m in norms:
                m.momentum = None  # cumulative average over the batches
            batch_size = min(batch_size, x.shape[1])
            for rows in self.groups(batch_size):
                for m in norms:
                    # Also the module's own batch counter, which the cumulative average divides by
                    # (shared by a group: its runs see the same number of batches).
                    m.reset_running_stats()
                own = dict(self.module.named_buffers())
                # Each run starts from the reset statistics and accumulates into its own copy.
                fresh = {name: own[name].expand(len(rows), *own[name].shape).clone() for name in self.buffers}
                params = {**{n: p[rows] for n, p in {**self.params, **self.frozen}.items()}, **fresh}
                sets = which[rows]
                for start in range(0, x.shape[1], batch_size):
                    batch = slice(start, start + batch_size)
                    logits = self.logits(params, x[sets, batch])  # updates ``fresh``
                    if y is not None and start < n_scored:
                        batch_loss, correct = loss_and_correct(logits, y[sets, batch])
                        loss[rows] += batch_loss.double().sum(1)
                        acc[rows] += correct.double().sum(1)
                for name, b in self.buffers.items():
                    b[rows] = fresh[name]
        finally:
            for m, momentum in zip(norms, momenta):
                m.momentum = momentum
        return None if y is None else ((loss / n_scored).float(), (acc / n_scored).float())

    # ---- state ---------------------------------------------------------------------------

    def flat(self) -> Tensor:
        """Current state, (M, P): parameters and buffers in :func:`layout` order."""
        tensors = self._all()
        return torch.cat([tensors[layer.name].reshape(self.n_runs, -1) for layer in self.layers], 1)

    def weight_norm(self) -> Tensor:
        """Norm of each run's trained group (the SI group on a sphere), (M,), in float64."""
        return si_norm(self.flat(), self.layers, group=self.group)

    def _flat_entries(self) -> list[str]:
        """The update state's entries laid out as the trained buffer (the others: Adam's step)."""
        return [key for key, v in self.opt_state.items() if v.shape == self.trained.shape]

    def state(self) -> dict[str, Tensor]:
        """Everything that changes during training — trained parameters, buffers, the update's
        state — by tensor name (``param/<name>``, ``buffer/<name>``, ``update/<name>/<entry>``
        or ``update/<entry>``); :meth:`load_state` puts it back."""
        flat = self._flat_entries()
        return {**{f"param/{n}": p for n, p in self.params.items()},
                **{f"buffer/{n}": b for n, b in self.buffers.items()},
                **{f"update/{n}/{key}": v for key in flat for n, v in self.views(self.opt_state[key]).items()},
                **{f"update/{key}": v for key, v in self.opt_state.items() if key not in flat}}

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state` (tensors or arrays); every entry must be present."""
        device = self.trained.device
        get = lambda key: torch.as_tensor(np.asarray(state[key])).to(device)  # noqa: E731
        flat = self._flat_entries()
        self.trained = self.flatten({n: get(f"param/{n}") for n in self._shapes})
        self.buffers = {n: get(f"buffer/{n}") for n in self.buffers}
        self.opt_state = {key: self.flatten({n: get(f"update/{n}/{key}") for n in self._shapes}) if key in flat
                          else get(f"update/{key}") for key in self.opt_state}
