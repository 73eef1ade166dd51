"""K-FAC as an optimizer: natural-gradient descent with Kronecker-factored curvature.

The natural gradient ``F^-1 grad`` for K-FAC's block-diagonal ``F ~ G_l kron A_l`` costs one
pair of small inverses per layer (Martens & Grosse 2015). The factors are the ones of
:func:`lib.curvature.kronecker.kfac`, from the same factor loop
(:mod:`lib.curvature.factors`), but averaged over mini-batches as training goes.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .._checks import check_damping, check_int
from ..curvature.factors import (LayerRecorder, factor_moments, layer_rows, supported_layers,
                                 tikhonov_factors)
from ..curvature.losses import Loss, fisher_kind

__all__ = ["KFACOptimizer"]


class KFACOptimizer(torch.optim.Optimizer):
    """Natural-gradient descent with K-FAC (Martens & Grosse 2015), as a torch optimizer.

    Every ``curvature_interval`` steps the factors ``A_l`` and ``G_l`` of the current
    mini-batch enter exponential moving averages (decay ``ema_decay``); ``G_l`` uses
    ``num_samples`` labels drawn from the model (``kind="mc"``) or the true labels
    (``"empirical"``), obtained from an extra backward pass to the layer outputs only,
    right after the forward pass, so no second forward pass is needed. Every
    ``inverse_interval`` steps the damped factors are inverted (Cholesky). A step
    preconditions each layer's gradient, ``Delta_l = (G_l + sqrt(lambda)/pi I)^-1 grad_l
    (A_l + pi sqrt(lambda) I)^-1``, rescales all of them by
    ``nu = min(1, sqrt(kl_clip / (lr^2 sum_l <Delta_l, grad_l>)))`` (KL clipping, Ba et al.
    2017), and applies SGD with momentum to the result. Parameters of other modules
    (e.g. BatchNorm) get the plain gradient, with a warning naming them.

    Usage is that of any optimizer: ``loss.backward(); optimizer.step()`` or
    ``optimizer.step(closure)`` (e.g. :func:`lib.book.train.train`). The model must be in
    training mode with gradients enabled for its forward passes to be recorded.

    Args:
        model: the network (its ``Linear``/``Conv2d`` layers are preconditioned).
        loss_fn: ``nn.CrossEntropyLoss`` or ``nn.MSELoss`` (defines the likelihood).
        lr, momentum, weight_decay: as in SGD.
        factor_damping: Tikhonov damping ``lambda`` of the factors (not ``+ lambda I`` on
            the matrix: see :func:`lib.curvature.factors.tikhonov_factors`).
        pi_damping: split the factor damping between the factors by ``pi`` (see
            :func:`lib.curvature.factors.balance_pi`).
        ema_decay: weight of the old factors in the moving averages.
        curvature_interval, inverse_interval: steps between factor updates / inversions.
        kl_clip: bound on the squared step length in the Fisher metric (None: off).
        kind: ``"mc"`` or ``"empirical"`` (a :class:`~lib.curvature.losses.FisherKind`).
        num_samples: labels drawn per example for ``"mc"``.
        fold_bias: fold biases into ``A`` (default) or precondition them by ``G`` alone.
        seed: seed of the sampled labels.
    """

    def __init__(self, model: nn.Module, loss_fn: nn.Module, lr: float = 0.01, *,
                 momentum: float = 0.9, weight_decay: float = 0.0, factor_damping: float = 1e-3,
                 pi_damping: bool = True, ema_decay: float = 0.95, curvature_interval: int = 1,
                 inverse_interval: int = 10, kl_clip: float | None = 1e-3,
                 kind: str = "mc", num_samples: int = 1, fold_bias: bool = True,
                 seed: int = 0):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        for name, value, low in [("lr", lr, 0.0), ("weight_decay", weight_decay, 0.0)]:
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= low):
                raise ValueError(f"{name} must be a finite number >= {low}, got {value!r}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
        if not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay!r}")
        if check_damping(factor_damping, "factor_damping") <= 0:
            raise ValueError("factor_damping must be > 0: K-FAC's factors can be singular")
        if kl_clip is not None and not (isinstance(kl_clip, (int, float)) and kl_clip > 0):
            raise ValueError(f"kl_clip must be a positive number or None, got {kl_clip!r}")
        kind = fisher_kind(kind, ("mc", "empirical"))
        check_int(curvature_interval, "curvature_interval")
        check_int(inverse_interval, "inverse_interval")
        check_int(num_samples, "num_samples")
        self.model, self.loss = model, Loss(loss_fn)
        self.layers = supported_layers(model, "skip")
        self.layer_params = {id(p) for _, m in self.layers for p in m.parameters(recurse=False)}
        params = [p for p in model.parameters() if p.requires_grad]
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                        factor_damping=factor_damping)
        super().__init__(params, defaults)
        self.pi_damping, self.ema_decay, self.kl_clip = pi_damping, ema_decay, kl_clip
        self.curvature_interval, self.inverse_interval = curvature_interval, inverse_interval
        self.kind, self.num_samples, self.fold_bias = kind, num_samples, fold_bias
        self.generator = torch.Generator(device=params[0].device).manual_seed(seed)
        self._recorder = LayerRecorder(self.layers)
        self._batch_targets = None
        self._pre_handle = model.register_forward_pre_hook(self._before_forward)
        self._handle = model.register_forward_hook(self._after_forward)

    # -- statistics ---------------------------------------------------------------------
    def _layer_state(self, module: nn.Module) -> dict:
        return self.state[module.weight]

    def _steps(self) -> int:
        state = self._layer_state(self.layers[0][1])
        return int(state["step"]) if "step" in state else 0

    def set_targets(self, y: Tensor) -> None:
        """Give the true labels of the next forward pass (only ``kind="empirical"``)."""
        self._batch_targets = y

    def _before_forward(self, model, args):
        """Before the model's forward pass: forget the layers' previous calls."""
        self._recorder.clear()

    def _after_forward(self, model, args, f):
        """After the model's forward pass: the factors of this mini-batch (on stats steps)."""
        if not (model.training and torch.is_grad_enabled() and f.requires_grad):
            return
        if self._steps() % self.curvature_interval != 0:
            return
        if self.kind == "empirical" and self._batch_targets is None:
            raise ValueError("kind='empirical' needs the labels: call "
                             "optimizer.set_targets(y) before the forward pass")
        y = self._batch_targets if self.kind == "empirical" else None
        # The curvature of the batch's mean loss: c = 1 / B (or 1 / (B C) for MSE).
        scale = self.loss.scale(f.shape[0], f[0].numel())
        rows = layer_rows(self.loss, f, y, self._recorder, self.kind, self.num_samples,
                          self.generator, self.fold_bias, retain_graph=True)
        for module, a, T, g in rows:
            with torch.no_grad():
                A, G = factor_moments(a, T, g, f.shape[0], scale)
                self._update_average(module, "A", A)
                self._update_average(module, "G", G)

    def _update_average(self, module, key: str, value: Tensor):
        state = self._layer_state(module)
        if key not in state:
            state[key] = value.clone()
        else:
            state[key].mul_(self.ema_decay).add_(value, alpha=1 - self.ema_decay)

    def _invert(self, module, factor_damping: float):
        state = self._layer_state(module)
        A, G = tikhonov_factors(state["A"], state["G"], factor_damping, self.pi_damping)
        state["A_inv"] = torch.cholesky_inverse(torch.linalg.cholesky(A))
        state["G_inv"] = torch.cholesky_inverse(torch.linalg.cholesky(G))

    # -- the step -----------------------------------------------------------------------
    def _gradient_matrix(self, module, weight_decay: float) -> Tensor:
        w = module.weight
        grad = w.grad.reshape(w.shape[0], -1) + weight_decay * w.detach().reshape(w.shape[0], -1)
        bias = module.bias
        if bias is not None and bias.requires_grad:
            gb = (bias.grad + weight_decay * bias.detach())[:, None]
            grad = torch.cat([grad, gb], dim=1) if self.fold_bias else grad
        return grad

    def _precondition(self, module, grad: Tensor) -> tuple[Tensor, Tensor | None]:
        state = self._layer_state(module)
        step = state["G_inv"] @ grad @ state["A_inv"]
        bias = module.bias
        step_b = None
        if bias is not None and bias.requires_grad and not self.fold_bias:
            step_b = state["G_inv"] @ bias.grad
        return step, step_b

    @torch.no_grad()
    def step(self, closure=None):
        """One natural-gradient step; ``closure`` as for any torch optimizer."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        group = self.param_groups[0]
        lr, factor_damping, wd = group["lr"], group["factor_damping"], group["weight_decay"]
        steps = self._steps()
        updates, inner = {}, 0.0
        for name, module in self.layers:
            state = self._layer_state(module)
            if module.weight.grad is None:
                continue
            if "A" not in state:
                raise RuntimeError(f"no curvature statistics for layer '{name}': the forward "
                                   "pass must run in training mode with gradients enabled")
            if steps % self.inverse_interval == 0 or "A_inv" not in state:
                self._invert(module, factor_damping)
            grad = self._gradient_matrix(module, wd)
            step, step_b = self._precondition(module, grad)
            inner += float((step * grad).sum())
            if step_b is not None:
                inner += float((step_b * (module.bias.grad + wd * module.bias)).sum())
            updates[name] = (step, step_b)
        nu = 1.0
        if self.kl_clip is not None and inner > 0:
            nu = min(1.0, math.sqrt(self.kl_clip / (lr ** 2 * inner)))
        for name, module in self.layers:
            if name not in updates:
                continue
            step, step_b = updates[name]
            w = module.weight
            if module.bias is not None and module.bias.requires_grad and self.fold_bias:
                self._apply(w, nu * step[:, :-1].reshape(w.shape), group)
                self._apply(module.bias, nu * step[:, -1], group)
            else:
                self._apply(w, nu * step.reshape(w.shape), group)
                if step_b is not None:
                    self._apply(module.bias, nu * step_b, group)
        for p in group["params"]:  # other modules: momentum SGD on the plain gradient
            if id(p) not in self.layer_params and p.grad is not None:
                self._apply(p, p.grad + wd * p, group)
        for _, module in self.layers:
            state = self._layer_state(module)
            state["step"] = torch.tensor(float(steps + 1))
        return loss

    def _apply(self, p: Tensor, direction: Tensor, group: dict):
        if group["momentum"] > 0:
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = direction.clone()
            else:
                state["momentum_buffer"].mul_(group["momentum"]).add_(direction)
            direction = state["momentum_buffer"]
        p.add_(direction, alpha=-group["lr"])

    def remove_hooks(self) -> None:
        """Detach the optimizer from the model's forward passes."""
        self._recorder.remove()
        self._pre_handle.remove()
        self._handle.remove()
