"""The factored forward of a `BaselLinear` with frozen bases, as two GEMMs and a backward that knows what trains.

    y = U_k (s̃_k ⊙ V_kᵀx) + Ũ (Ṽᵀx) = [U_k, Ũ] ([s̃_k, 1] ⊙ [V_k, Ṽ]ᵀx)

Written as two products per term, the r̃ columns of the additional dimension cost four GEMMs with a dimension of
r̃ (16) in forward and backward, which run far below the speed of the wide ones on a CPU. Joined to the kept
bases they ride along inside the same two GEMMs each way. Plain autograd cannot be given the joined form: it
would form the gradient of the whole [U_k, Ũ] and [V_k, Ṽ], the frozen bases' columns included. This backward
forms only what trains: s̃ (a reduction), Ũ and Ṽ (r̃ columns), and the input's gradient.

The joined bases are built again in backward rather than saved: saving them would hold a copy of every layer's
bases until backward, where the frozen ones are now only referenced.
"""

from __future__ import annotations

import torch


def _joined(basis: torch.Tensor, extra: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[basis, extra] in `dtype`, (d, k + r̃); no copy when r̃ = 0 and the basis already is `dtype`."""
    if extra.shape[1] == 0:
        return basis.to(dtype)
    return torch.cat([basis.to(dtype), extra.to(dtype)], dim=1)


def _scales(singular_values: torch.Tensor, additional_dim: int) -> torch.Tensor:
    """[s̃_k, 1, …, 1]: the kept bases are scaled, the additional dimension's columns are not."""
    return torch.cat([singular_values, singular_values.new_ones(additional_dim)])


class FactoredProduct(torch.autograd.Function):
    """y = [U_k, Ũ] ([s̃_k, 1] ⊙ [V_k, Ṽ]ᵀx), computed in `dtype` (autocast's, or s̃'s outside autocast).

    The scaled product is formed in s̃'s precision and rounded to `dtype` once, as autocast did when the
    scaling was its own step. U_k and V_k get no gradient: callers with trainable bases use plain autograd.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, u: torch.Tensor, s: torch.Tensor, v: torch.Tensor,  # type: ignore[override]
                extra_u: torch.Tensor, extra_v: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            inputs = x.to(dtype)
            projected = inputs @ _joined(v, extra_v, dtype)  # (…, k + r̃)
            scaled = (projected * _scales(s, extra_v.shape[1])).to(dtype)
            y = scaled @ _joined(u, extra_u, dtype).T  # (…, n)
        ctx.save_for_backward(inputs, u, s, v, extra_u, extra_v, projected)
        ctx.input_dtype = x.dtype
        return y

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor):  # type: ignore[override]
        inputs, u, s, v, extra_u, extra_v, projected = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: a second derivative is wanted (the exact HVP)
            return _differentiable_backward(ctx, grad_y, inputs, u, s, v, extra_u, extra_v)
        dtype, kept = inputs.dtype, s.numel()
        with torch.autocast(grad_y.device.type, enabled=False):
            grad_y = grad_y.to(dtype)
            grad_scaled = grad_y @ _joined(u, extra_u, dtype)  # (…, k + r̃)
            grad_projected = (grad_scaled * _scales(s, extra_v.shape[1])).to(dtype)
            wants = ctx.needs_input_grad
            grad_x = grad_projected @ _joined(v, extra_v, dtype).T if wants[0] else None
            grad_y, inputs, grad_scaled, projected, grad_projected = (
                t.reshape(-1, t.shape[-1]) for t in (grad_y, inputs, grad_scaled, projected, grad_projected))
            grad_s = ((grad_scaled[:, :kept].to(s.dtype) * projected[:, :kept].to(s.dtype)).sum(0)
                      if wants[2] else None)
            grad_extra_u = (grad_y.T @ projected[:, kept:]).to(extra_u.dtype) if wants[4] else None  # scale 1
            grad_extra_v = (inputs.T @ grad_projected[:, kept:]).to(extra_v.dtype) if wants[5] else None
        return (None if grad_x is None else grad_x.to(ctx.input_dtype), None, grad_s, None, grad_extra_u,
                grad_extra_v, None)


def _differentiable_backward(ctx, grad_y, inputs, u, s, v, extra_u, extra_v) -> tuple:
    """The same gradients by autograd through the plain formula, so that they can be differentiated again.

    Only `hvp=double_backward` asks for this (float32 or float64, autocast off); `projected` was formed
    inside `forward`, out of autograd's sight, so the fast backward's terms would miss its second derivative.
    """
    if inputs.dtype != ctx.input_dtype:
        raise RuntimeError(f"a second derivative of a BaselLinear computed in {inputs.dtype} from "
                           f"{ctx.input_dtype} inputs is not supported: run the exact HVP with autocast off")
    wants = ctx.needs_input_grad
    operands = {0: inputs, 2: s, 4: extra_u, 5: extra_v}
    y = plain_product(inputs, u, s, v, extra_u, extra_v)
    grads = iter(torch.autograd.grad(y, [t for i, t in operands.items() if wants[i]], grad_y, create_graph=True))
    return tuple(next(grads) if i in operands and wants[i] else None for i in range(7))


def plain_product(x: torch.Tensor, u: torch.Tensor, s: torch.Tensor, v: torch.Tensor, extra_u: torch.Tensor,
                  extra_v: torch.Tensor) -> torch.Tensor:
    """The same map as two terms, for autograd: what trainable bases and second derivatives need."""
    y = ((x @ v) * s) @ u.T  # (…, k) → (…, n)
    if extra_v.shape[1] > 0:
        y = y + (x @ extra_v) @ extra_u.T  # (…, r̃) → (…, n)
    return y


def factored_product(x: torch.Tensor, u: torch.Tensor, s: torch.Tensor, v: torch.Tensor,
                     extra_u: torch.Tensor, extra_v: torch.Tensor) -> torch.Tensor:
    """U_k (s̃_k ⊙ V_kᵀx) + Ũ (Ṽᵀx) for frozen U_k (n×k), V_k (m×k), in autocast's dtype under autocast (as
    its products would be) and s̃'s outside it."""
    device = x.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else s.dtype
    return FactoredProduct.apply(x, u, s, v, extra_u, extra_v, dtype)
