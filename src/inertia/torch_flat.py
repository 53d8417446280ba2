"""``FlatParameters``: a torch model's parameters and gradients in one contiguous buffer.

A step over thousands of small tensors is dominated by what Python pays per tensor (reading
each tensor's type, size, strides and address to check it is still what the step planned),
not by the bytes it moves. ``FlatParameters`` places the parameters of each param group (per
dtype and device) in one flat ``nn.Parameter`` and their gradients in one flat gradient
buffer, as DeepSpeed and apex do: each model parameter becomes a view of its slice, and its
``.grad`` a view of the gradient buffer's slice, so that autograd accumulates into it in
place. The optimizer then steps one tensor per buffer.

Trade-offs (what differs from stepping the parameters one by one):

- Per-tensor options act on each buffer as a whole: ``clipnorm`` clips the buffer's norm.
  Per-group options (``lr``, ``weight_decay``, ...) stay per group: pass param groups.
- Gradients are never None: ``zero_grad()`` fills the buffer with zeros, so a parameter that
  received no gradient in a step is still moved by momentum and weight decay (as
  ``torch.optim.SGD`` does after ``zero_grad(set_to_none=False)``), where a per-tensor step
  skips a parameter whose gradient is None.
- The optimizer's ``state_dict`` holds one momentum buffer per flat buffer, not one per model
  parameter.
- The model's parameters must stay in the buffer: ``model.to(...)``, ``model.half()`` or
  ``p.data = ...`` move a parameter out; the next step (or ``zero_grad``) then raises, before
  anything changes. Gradients that backward puts elsewhere (after ``model.zero_grad()``) are
  copied into the buffer as soon as each is accumulated, so what reads the buffer's gradient
  before the step (``GradScaler.unscale_``, ``clip_grad_norm_``) sees them; an assigned
  ``.grad`` is copied in at the next step. The hooks that do this cost about 1.2 us per
  parameter per backward (2.5 ms on a backward over 2000 tensors of 4096, which the flat step
  saves twice over: 3.8 ms a step against 8.6, 2026-12-04).
- Frozen parameters (``requires_grad=False``) are left where they are, and out of the buffer.
  Freezing or unfreezing a parameter afterwards makes the next step raise (the buffer's
  momentum would still move a frozen one, and an unfrozen one is in no buffer): make a new
  ``FlatParameters`` after changing which parameters train.
- Copies (``copy.deepcopy``, ``pickle``, ``torch.save``) of the model together with the
  optimizer keep the copied parameters in the copied buffer.

Example:
    >>> import torch, inertia.torch
    >>> model = torch.nn.Linear(3, 2)
    >>> flat = inertia.torch.FlatParameters(model.parameters())
    >>> optimizer = inertia.torch.SGD(flat, lr=0.1, momentum=0.9)
    >>> model(torch.ones(4, 3)).sum().backward()
    >>> optimizer.step()
    >>> optimizer.zero_grad()
    >>> [tuple(p.shape) for p in flat.parameters()]
    [(32,)]
    >>> model.weight.untyped_storage().data_ptr() == flat.parameters()[0].untyped_storage().data_ptr()
    True
"""

from __future__ import annotations

import operator
from itertools import repeat
from typing import Any, Iterable

from inertia._optional import missing_torch

try:
    import torch
except ModuleNotFoundError as error:
    if error.name != "torch":
        raise
    raise missing_torch("inertia.torch_flat (FlatParameters)") from error

__all__ = ["FlatParameters"]

_GRAD = operator.attrgetter("grad")
_DTYPE_OF = operator.attrgetter("dtype")
_REQUIRES_GRAD = operator.attrgetter("requires_grad")
_ALIGNMENT_BYTES = 64  # each slice starts on a cache line, as the kernels of the model's own layers like


def _param_groups(params: Any) -> list[dict]:
    if isinstance(params, torch.Tensor):
        raise TypeError(
            "FlatParameters takes an iterable of parameters or of param-group dicts, not a tensor. "
            f"Received a tensor of shape {tuple(params.shape)}."
        )
    entries = list(params)
    if not entries:
        raise ValueError("FlatParameters got an empty parameter list.")
    if all(isinstance(entry, dict) for entry in entries):
        return [dict(entry) for entry in entries]
    if any(isinstance(entry, dict) for entry in entries):
        raise TypeError("FlatParameters takes parameters or param-group dicts, not a mix of both.")
    return [{"params": entries}]


class _Buffer:
    """One flat buffer: its parameter, its gradient, and the model parameters viewing it."""

    def __init__(self, members: list[torch.nn.Parameter]) -> None:
        first = members[0]
        self.dtype, self.device = first.dtype, first.device
        step = max(1, _ALIGNMENT_BYTES // first.element_size())
        self.offsets, total = [], 0
        for member in members:
            self.offsets.append(total)
            total += -(-member.numel() // step) * step
        data = torch.zeros(total, dtype=self.dtype, device=self.device)
        grad = torch.zeros_like(data)
        self.members = members
        self.shapes = [member.size() for member in members]
        with torch.no_grad():
            for member, offset in zip(members, self.offsets):
                data[offset : offset + member.numel()].copy_(member.reshape(-1))
                if member.grad is not None:
                    grad[offset : offset + member.numel()].copy_(member.grad.reshape(-1))
            for member, offset, shape in zip(members, self.offsets, self.shapes):
                member.data = data[offset : offset + member.numel()].view(shape)
        self.parameter = torch.nn.Parameter(data)
        self.grad = grad
        self.parameter.grad = grad
        self.views = [self._view(k) for k in range(len(members))]
        for member, view in zip(members, self.views):
            member.grad = view
        self.addresses = list(map(torch.Tensor.data_ptr, members))
        self.view_addresses = list(map(torch.Tensor.data_ptr, self.views))
        self._watch()

    def _watch(self) -> None:
        """After each backward, a member's gradient that autograd put elsewhere (its ``.grad``
        was None, after ``model.zero_grad()``) is copied into the buffer at once, so that what
        reads the buffer's gradient before the step (``GradScaler.unscale_``,
        ``clip_grad_norm_``) sees it."""
        self._hooks = [
            member.register_post_accumulate_grad_hook(lambda member, index=index: self._gather(index, member))
            for index, member in enumerate(self.members)
        ]

    def _gather(self, index: int, member: torch.Tensor) -> None:
        grad = member.grad
        if grad is None or grad is self.views[index]:
            return
        if grad.layout is not torch.strided:
            raise TypeError(
                f"FlatParameters: parameter {index} got a {grad.layout} gradient; flat buffers hold dense gradients only."
            )
        fresh = self._view(index)
        fresh.copy_(grad.detach())
        member.grad = fresh
        self.views[index] = fresh

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("_hooks", None)  # hooks live on the tensors: made again for the copy
        return state

    def __setstate__(self, state: dict) -> None:
        # A copy (deepcopy, pickle) clones every tensor on its own, so the copied members no
        # longer view the copied buffer: they are placed in it again (same values), and the
        # gradients are linked again at the next step.
        self.__dict__.update(state)
        data = self.parameter.data
        with torch.no_grad():
            for index, member in enumerate(self.members):
                offset = self.offsets[index]
                view = data[offset : offset + member.numel()].view(self.shapes[index])
                if member.data_ptr() != view.data_ptr():
                    view.copy_(member.detach())
                    member.data = view
        self.views = [self._view(k) for k in range(len(self.members))]
        self.addresses = list(map(torch.Tensor.data_ptr, self.members))
        self.view_addresses = list(map(torch.Tensor.data_ptr, self.views))
        self._watch()

    def _view(self, index: int) -> torch.Tensor:
        offset = self.offsets[index]
        return self.grad[offset : offset + self.members[index].numel()].view(self.shapes[index])

    def _holds(self, tensors: list, addresses: list, ours: bool = False) -> bool:
        """Whether ``tensors`` are still contiguous tensors of the planned shapes at the planned
        addresses (a view's size or strides changed in place, or its memory replaced, fails),
        checked a list at a time. The model's parameters are also checked for dtype and the
        negative bit. The gradient views (``ours``) are not: they were made here from the
        buffer, and only assigning them a reinterpreting view of that same buffer
        (``.data = buffer.view(dtype)[...]``) would change their dtype at the same address."""
        return (
            list(map(torch.Tensor.data_ptr, tensors)) == addresses
            and list(map(torch.Tensor.size, tensors)) == self.shapes
            and all(map(torch.Tensor.is_contiguous, tensors))
            and (ours or all(map(operator.is_, map(_DTYPE_OF, tensors), repeat(self.dtype))))
            and (ours or not any(map(torch.Tensor.is_neg, tensors)))
        )

    def check_members(self) -> None:
        if not all(map(_REQUIRES_GRAD, self.members)):  # every step: a list at a time
            frozen = next(k for k, member in enumerate(self.members) if not member.requires_grad)
            raise RuntimeError(
                f"FlatParameters: parameter {frozen} of a flat buffer (shape {tuple(self.shapes[frozen])}) was "
                "frozen (requires_grad=False) after the buffer was made; the buffer's momentum and weight decay "
                "would still move it. Nothing was updated; make a new FlatParameters (and optimizer) after "
                "changing which parameters train."
            )
        if self._holds(self.members, self.addresses):
            return
        for index, member in enumerate(self.members):
            if not self._holds([member], [self.addresses[index]]):
                raise RuntimeError(
                    f"FlatParameters: parameter {index} of a flat buffer (shape {tuple(self.shapes[index])}, "
                    f"{self.dtype}) no longer lives in the buffer: it now has shape {tuple(member.shape)}, "
                    f"dtype {member.dtype}, device {member.device}. Its data was replaced (`model.to(...)`, "
                    "`model.half()`, `p.data = ...`) or its size or strides changed in place. Nothing was "
                    "updated; make a new FlatParameters (and optimizer) after moving the model."
                )

    def link_gradients(self, zero: bool) -> None:
        """Make every member's ``.grad`` its view of the gradient buffer again (copying a
        gradient that was put elsewhere in, or zeros for None), and the flat parameter's
        gradient the buffer."""
        grads = list(map(_GRAD, self.members))
        if zero:
            self.grad.zero_()
        linked = all(map(operator.is_, grads, self.views)) and self._holds(self.views, self.view_addresses, ours=True)
        if not linked:
            for index, (member, grad) in enumerate(zip(self.members, grads)):
                view = self.views[index]
                if grad is view and self._holds([view], [self.view_addresses[index]], ours=True):
                    continue
                fresh = self._view(index)
                if grad is None or zero:
                    fresh.zero_()
                else:
                    if grad.layout is not torch.strided:
                        raise TypeError(
                            f"FlatParameters: parameter {index} has a {grad.layout} gradient; flat buffers "
                            "hold dense gradients only."
                        )
                    fresh.copy_(grad.detach().clone())  # a clone: the gradient may alias the buffer
                member.grad = fresh
                self.views[index] = fresh
        if self.parameter.grad is not self.grad:
            self.parameter.grad = self.grad


class FlatParameters:
    """Parameters (and gradients) of each param group placed in one contiguous buffer per
    dtype and device, for ``inertia.torch.SGD`` steps over many small tensors.

    ``inertia.torch.SGD(flat, ...)`` then steps the flat buffers: before each step it checks
    that every model parameter still lives in its buffer (raising if one was moved out, before
    anything changes) and copies in any gradient that was put elsewhere; ``zero_grad()``
    fills the gradient buffers with zeros. See the module docstring for the trade-offs.

    Args:
        params: the model's parameters (``model.parameters()``), or param-group dicts whose
            options (``lr``, ``weight_decay``, ...) are kept for the flat buffers of that group.
    """

    def __init__(self, params: Iterable[torch.Tensor] | Iterable[dict]) -> None:
        self._groups: list[tuple[dict, list[_Buffer]]] = []
        self._frozen: list[torch.Tensor] = []  # left out: a step raises if one starts to train
        seen: set[int] = set()
        for number, group in enumerate(_param_groups(params)):
            members = group.pop("params", None)
            members = [members] if isinstance(members, torch.Tensor) else list(members or [])
            buckets: dict[tuple, list] = {}
            for index, member in enumerate(members):
                where = f"param group {number}, parameter {index}"
                if not isinstance(member, torch.Tensor):
                    raise TypeError(f"FlatParameters takes tensors (nn.Parameter); {where} is a {type(member).__name__}.")
                if id(member) in seen:
                    raise ValueError(f"FlatParameters: {where} appears twice.")
                seen.add(id(member))
                if not member.requires_grad:
                    self._frozen.append(member)
                    continue
                problem = (
                    f"a {type(member).__name__} (a tensor subclass)" if type(member) not in (torch.Tensor, torch.nn.Parameter)
                    else f"a {member.layout} tensor" if member.layout is not torch.strided
                    else f"of dtype {member.dtype}" if not member.dtype.is_floating_point
                    else None
                )
                if problem:
                    raise TypeError(f"FlatParameters: {where} is {problem}; flat buffers hold dense floating-point tensors.")
                buckets.setdefault((member.dtype, member.device), []).append(member)
            self._groups.append((group, [_Buffer(bucket) for bucket in buckets.values()]))

    def parameters(self) -> list[torch.nn.Parameter]:
        """The flat parameters, one per param group, dtype and device."""
        return [buffer.parameter for _, buffers in self._groups for buffer in buffers]

    def param_groups(self) -> list[dict]:
        """Param groups of the flat parameters, with each group's own options."""
        return [{**options, "params": [buffer.parameter for buffer in buffers]} for options, buffers in self._groups]

    def sync(self) -> None:
        """Before a step: raise if a model parameter left its buffer (nothing changes then);
        copy gradients that were put elsewhere into the buffers."""
        buffers = [buffer for _, group in self._groups for buffer in group]
        for buffer in buffers:
            buffer.check_members()
        unfrozen = [p for p in self._frozen if p.requires_grad]
        if unfrozen:
            raise RuntimeError(
                f"FlatParameters: a parameter of shape {tuple(unfrozen[0].shape)} that was frozen when the buffers "
                "were made now requires a gradient; it is in no buffer, so no step would train it. Nothing was "
                "updated; make a new FlatParameters (and optimizer) after changing which parameters train."
            )
        for buffer in buffers:
            buffer.link_gradients(zero=False)

    def zero_grad(self) -> None:
        """Zero every gradient buffer in place (the model's gradients stay views of it);
        raises first, changing nothing, if a model parameter left its buffer."""
        buffers = [buffer for _, group in self._groups for buffer in group]
        for buffer in buffers:
            buffer.check_members()
        for buffer in buffers:
            buffer.link_gradients(zero=True)

    def wrote(self) -> None:
        """After a step wrote the buffers: bump the model parameters' autograd version
        counters, as torch's in-place updates of them would (a backward through a graph saved
        before the step then raises instead of using the new weights)."""
        torch._C._increment_version(self._members())

    def holds(self, tensor: torch.Tensor) -> bool:
        """Whether ``tensor`` is one of the model parameters placed in a buffer."""
        return any(tensor is member for member in self._members())

    def _members(self) -> list[torch.Tensor]:
        return [member for _, buffers in self._groups for buffer in buffers for member in buffer.members]

    def owns(self, tensor: torch.Tensor) -> bool:
        """Whether ``tensor`` is one of the flat parameters."""
        return any(tensor is flat for flat in self.parameters())

    def __repr__(self) -> str:
        sizes = [tuple(p.shape) for p in self.parameters()]
        members = sum(len(buffer.members) for _, buffers in self._groups for buffer in buffers)
        return f"inertia.torch.FlatParameters({members} parameters in buffers of shapes {sizes})"
