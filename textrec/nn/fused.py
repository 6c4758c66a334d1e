"""Fast path: one autograd.Function per layer that runs the whole recurrence.

What makes it fast on CPU (where per-op dispatch and memory traffic dominate):

* the input side ``W_ih x_t + b`` of every time step and the refinement projection
  ``x̃_t = W_refine x_t`` come from one matrix product per direction and layer, outside the
  loop (``prepare_weights`` stacks the matrices; a low-rank projection stacks its down map
  there and maps the codes up with one more product); `projection.py` runs them, through
  oneDNN on CPU, with a backward of its own; their gradient is built in one buffer;
* both directions advance together: their recurrent products are one ``bmm`` over a
  leading direction axis (the reverse direction sees its input flipped in time);
* the loops write into preallocated buffers with ``out=``, record nothing for autograd,
  and without gradients reuse one scratch buffer per quantity instead of keeping T;
* the backward is written by hand: per step only the few ops the recurrence forces
  (about six), the per-step factors (σ', products of saved activations) computed for all
  steps at once and in place, and every weight gradient in one product afterwards;
* on CPU, tanh over more than a few thousand elements is computed as 2 σ(2x) - 1 (`tanh`):
  torch's CPU tanh is not vectorised, its sigmoid is;
* on CUDA the LSTM's per-step element-wise work is one Triton kernel each way
  (``triton_steps.py``: a GPU is bound by the launches, not by this arithmetic).

Everything here is checked against the step-by-step path in ``cells.py`` by the tests
(values, gradients, ``gradcheck`` in float64).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from . import triton_steps
from .gates import GATE_ORDER, SIGMOID_GATES
from .projection import InputProjection, directions, project


def supports(x: Tensor) -> bool:
    """The fused path handles every floating dtype and device the tensor ops support."""
    return x.is_floating_point()


# ------------------------------------------------------------------ shared helpers


def short_connection(xt: Tensor | None, xform: tuple[str, float]) -> Tensor | None:
    """x̃ as the gates see it: ``offset + bound(x̃)`` (``xform = (bound, offset)``).

    ``bound`` "tanh" keeps the short connection in (-1, 1); ``offset`` is 1 for a
    start-as-vanilla "mul" (factor ``1 + x̃``), else 0. Returns ``xt`` itself when both are off.
    """
    return None if xt is None else _with_offset(_bound(xt, xform), xform)


def _bound(xt: Tensor, xform, out: Tensor | None = None) -> Tensor:
    """x̃ through its bound, into ``out`` (a new tensor if None) outside autograd."""
    if xform[0] != "tanh":
        return xt
    if torch.is_grad_enabled() and xt.requires_grad:  # the step-by-step path, under autograd
        return torch.tanh(xt)
    return tanh(xt, torch.empty_like(xt) if out is None else out)


# torch's CPU tanh is not vectorised in the builds this project runs (2.6 ns an element on AVX-512 and
# AVX2 alike, against 0.4 ns for its sigmoid); tanh(x) = 2 σ(2x) - 1 in four vectorised passes is 3-4x
# faster from a few thousand elements on. Below that, or where the sigmoid is no faster (torch's
# portable kernels, other devices), torch.tanh.
_SIGMOID_TANH = torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
_SIGMOID_TANH_FROM = 4096


def sigmoid_tanh_applies(x: Tensor) -> bool:
    """Whether `tanh` computes tanh through the sigmoid for ``x``."""
    return _SIGMOID_TANH and x.device.type == "cpu" and x.numel() >= _SIGMOID_TANH_FROM


def tanh(x: Tensor, out: Tensor) -> Tensor:
    """``torch.tanh(x, out=out)``, through ``2 σ(2x) - 1`` where that is faster (`sigmoid_tanh_applies`)."""
    return _tanh(x, out, sigmoid_tanh_applies(x))


def _tanh(x: Tensor, out: Tensor, by_sigmoid: bool) -> Tensor:
    """`tanh` with the choice already made (the loops make it once per call)."""
    if by_sigmoid:
        return torch.mul(x, 2, out=out).sigmoid_().mul_(2).sub_(1)
    return torch.tanh(x, out=out)


def _bounded(proj: Tensor, G: int, xt_in: Tensor | None, refined_blocks, xform, w_up: Tensor | None = None) -> Tensor | None:
    """x̃ through its bound (tanh or none), before any offset: what a backward needs of it. (A low-rank
    x̃ is a product of its own, which the bound overwrites.)"""
    if not refined_blocks:
        return None
    xt = _split(proj, G, xt_in, True, w_up)[1]
    return _bound(xt, xform, out=xt if w_up is not None else None)


def _with_offset(bounded: Tensor | None, xform) -> Tensor | None:
    """x̃ as the gates see it (``short_connection``), from its bounded part."""
    return bounded + xform[1] if bounded is not None and xform[1] else bounded


def _keeps_bounded(refine: str, xform) -> bool:
    """Whether a backward needs x̃: for "mul" (its slope involves x̃) and for a tanh bound (its derivative does)."""
    return refine == "mul" or xform[0] != "none"


def _bound_grad(d_xt: Tensor, bounded: Tensor | None, xform, scratch: Tensor | None = None) -> Tensor:
    """Chain a gradient reaching the bounded x̃ back through tanh (1 - tanh², from the saved tanh), in place;
    ``scratch`` (a buffer of x̃'s shape the backward is done with) spares a temporary."""
    if xform[0] == "tanh":
        d_xt.addcmul_(torch.mul(d_xt, bounded, out=scratch), bounded, value=-1)  # d (1 - b²)
    return d_xt


def _refined_slice(refined_blocks: tuple[int, ...]) -> slice | None:
    """The row blocks a refinement writes, as one slice of the (..., blocks, H) gate view: the refined
    blocks, evenly spaced (LSTM i, o: ``0::3``), or else their span, which can only add the LSTM's g
    block (``i, f, o``: ``0:4``), overwritten by the candidate right after."""
    if not refined_blocks:
        return None
    gaps = {b - a for a, b in zip(refined_blocks, refined_blocks[1:])}
    step = gaps.pop() if len(gaps) == 1 else 1
    return slice(refined_blocks[0], refined_blocks[-1] + 1, step)


def _combine(sig: Tensor, r: Tensor, refine: str, out: Tensor) -> Tensor:
    if refine == "add":
        return torch.add(sig, r, out=out)
    return torch.mul(sig, r, out=out)


def _slope(S: Tensor, r5: Tensor | None, refine: str, blocks: int, sl: slice | None, out: Tensor | None = None) -> Tensor:
    """d(gate value)/d(pre-activation) for every block: σ(1 - σ), times x̃ on the refined blocks for "mul"."""
    K = torch.addcmul(S, S, S, value=-1, out=out)
    if r5 is not None and refine == "mul":
        K.view(*S.shape[:-1], blocks, S.shape[-1] // blocks)[..., sl, :].mul_(r5)
    return K


def _mul_factor(bounded: Tensor | None, refine: str, xform) -> Tensor | None:
    """In a backward of "mul": x̃ as the gates saw it, (..., 1, H) to broadcast over the refined blocks."""
    if refine != "mul" or bounded is None:
        return None
    return _with_offset(bounded, xform).unsqueeze(-2)


def _values(S: Tensor, V: Tensor, refined_blocks, blocks: int, H: int, also=()) -> list[Tensor]:
    """Each block's gate value: the combination (V) for a refined block, the sigmoid itself (S) for the
    others. V holds either every block, and then also those in ``also``, which the recurrence writes
    there; or, narrower than S, only the refined blocks in order (the LSTM's torch ops, `lstm_forward`),
    and the blocks in ``also`` are written over their scratch in S."""
    if V.shape[-1] < S.shape[-1]:
        return [_block(V, refined_blocks.index(k), H) if k in refined_blocks else _block(S, k, H) for k in range(blocks)]
    return [_block(V if (k in refined_blocks or k in also) else S, k, H) for k in range(blocks)]


def _accumulate_xt(terms, refine: str, out: Tensor) -> Tensor:
    """Write the gradient reaching x̃ into ``out``: Σ dG (add) or Σ dG·σ (mul) over the
    refined gates, where ``terms`` lists (a, b, σ) with dG = a·b per refined gate."""
    for n, (a, b, sig) in enumerate(terms):
        if n == 0:
            torch.mul(a, b, out=out)
            if refine == "mul":
                out.mul_(sig)
        elif refine == "add":
            out.addcmul_(a, b)
        else:
            out.addcmul_(a * b, sig)
    return out


def _low_rank_saved(proj: Tensor, G: int, w_up: Tensor | None) -> tuple:
    """What a backward keeps of a low-rank projection: a copy of the codes (a view would keep the whole
    joint product alive until the backward) and W_up."""
    return (proj[..., G:].contiguous(), w_up) if w_up is not None else (None, None)


def _steps(t: Tensor, keep: bool, T: int) -> list[Tensor]:
    """Per-step views of a (D, T, ...) buffer, or the same (D, ...) scratch tensor T times."""
    return list(t.unbind(1)) if keep else [t] * T


def _block(t: Tensor, k: int, H: int) -> Tensor:
    return t[..., k * H : (k + 1) * H]


def _split(proj: Tensor, G: int, xt_in: Tensor | None, refined: bool, w_up: Tensor | None = None):
    """Gate inputs and x̃ from the joint projection: its last block (a full projection), that block
    mapped up by ``w_up`` (a low-rank one, `_low_rank`), or ``xt_in`` (the identity case)."""
    xg = proj if proj.shape[-1] == G else proj[..., :G]
    if not refined:
        return xg, None
    if w_up is not None:
        return xg, _low_rank(proj[..., G:], w_up)
    return xg, (proj[..., G:] if proj.shape[-1] > G else xt_in)


def _low_rank(z: Tensor, w_up: Tensor) -> Tensor:
    """x̃ = z W_up for a low-rank projection: (D, T, B, r) codes times (D, r, H), one product."""
    D, T, B, r = z.shape
    return torch.bmm(z.reshape(D, T * B, r), w_up).view(D, T, B, w_up.shape[-1])


def _low_rank_grad(d_xt: Tensor | None, codes: Tensor | None, w_up: Tensor | None, d_proj: Tensor, G: int) -> Tensor | None:
    """Backward of `_low_rank`: writes the codes' gradient into ``d_proj``'s last block and returns W_up's."""
    if w_up is None or d_xt is None:
        return None
    D, T, B, H = d_xt.shape
    flat = d_xt.view(D, T * B, H)
    r = w_up.shape[1]
    d_proj[..., G:] = torch.bmm(flat, w_up.transpose(1, 2)).view(D, T, B, r)
    return torch.bmm(codes.view(D, T * B, r).transpose(1, 2), flat)


def _with_initial(first: Tensor, T: int) -> Tensor:
    """(D, T + 1, B, H) buffer whose slot 0 holds the initial state."""
    buf = first.new_empty(first.shape[0], T + 1, *first.shape[1:])
    buf[:, 0] = first
    return buf


def _xt_grad_target(d_proj: Tensor, G: int, xt_in: Tensor | None, w_up: Tensor | None = None, spare: Tensor | None = None) -> Tensor:
    """Where the gradient of x̃ goes: the projection's block of ``d_proj`` (a full projection), or a
    (D, T, B, H) tensor (the identity case, and a low-rank projection, whose block holds the codes):
    ``spare``, a buffer of that shape the backward is done with, else a new one."""
    if w_up is None and d_proj.shape[-1] > G:
        return d_proj[..., G:]
    if spare is not None:
        return spare
    return d_proj.new_empty(*d_proj.shape[:-1], w_up.shape[-1]) if w_up is not None else torch.empty_like(xt_in)


# ------------------------------------------------------------------ LSTM (blocks i, f, g, o)


def lstm_forward(xg, xt, h0, c0, w_t, refine, refined_blocks, keep, kernels=False):
    """LSTM over (D, T, B, 4H) gate inputs. Returns (H_full, c_n, saved): H_full is
    (D, T+1, B, H) with h0 in slot 0; saved = (S, V, C_full, tanh c) if ``keep``.
    ``kernels``: each step's element-wise work as one Triton kernel (`triton_steps.applies`).

    Only the refined blocks are combined with x̃ (one op per step on a strided view of the
    blocks); the other gates are read from the sigmoids (see `_values`)."""
    D, T, B, G = xg.shape
    H = G // 4
    sl = _refined_slice(refined_blocks) if xt is not None else None
    shape = (D, T, B) if keep else (D, B)
    a = xg.new_empty(D, B, G)
    a_g = _block(a, 2, H)
    S = xg.new_empty(*shape, G)  # sigmoids (the g block is scratch, or holds the candidate: `_values`)
    # The refined gates' values: every block for the Triton kernel (the candidate in the g block), else only
    # the blocks the refinement writes (`_values`; half the memory for i, o).
    V = S if sl is None else xg.new_empty(*shape, (G if kernels else len(range(4)[sl]) * H))
    TC = xg.new_empty(*shape, H)
    Hf = _with_initial(h0, T)
    Cf = _with_initial(c0, T) if keep else None
    C_s = Cf.unbind(1) if keep else [c0.clone()] * (T + 1)
    xg_s, H_s = xg.unbind(1), Hf.unbind(1)
    S_s, V_s, TC_s = _steps(S, keep, T), _steps(V, keep, T), _steps(TC, keep, T)
    if kernels:
        # One product and one kernel per step (triton_steps.py), into the same buffers as the ops below.
        r_s = xt.contiguous().unbind(1) if sl is not None else [None] * T
        for s in range(T):
            torch.bmm(H_s[s], w_t, out=a)  # h_{t-1} W_hh; the kernel adds the gate inputs
            triton_steps.lstm_forward_step(
                xg_s[s], a, r_s[s], S_s[s], V_s[s], C_s[s], C_s[s + 1], TC_s[s], H_s[s + 1],
                refined_blocks if sl is not None else (), refine,
            )
        return Hf, C_s[T], ((S, V, Cf, TC) if keep else None)
    i_s, f_s, g_s, o_s = (_steps(t, keep, T) for t in _values(S, V, refined_blocks, 4, H, also=(2,)))
    if sl is not None:
        S4_s = _steps(S.view(*shape, 4, H)[..., sl, :], keep, T)
        V4 = V.view(*shape, V.shape[-1] // H, H)
        V4_s = _steps(V4 if V.shape[-1] < G else V4[..., sl, :], keep, T)
        r_s = xt.unsqueeze(-2).unbind(1)
    # tanh through the sigmoid where that is faster (`tanh`; decided once, as a step of a batch-1 inference
    # is short enough for the check to show): the candidate's rides on the gates' sigmoid, its block doubled
    # first and 2 σ - 1 written where the candidate goes.
    by_sigmoid = sigmoid_tanh_applies(a_g)
    S_g_s = [_block(t, 2, H) for t in S_s] if by_sigmoid else None
    h = h0
    for s in range(T):
        torch.baddbmm(xg_s[s], h, w_t, out=a)
        if by_sigmoid:
            a_g.mul_(2)
        torch.sigmoid(a, out=S_s[s])
        if sl is not None:
            _combine(S4_s[s], r_s[s], refine, V4_s[s])
        if by_sigmoid:
            torch.mul(S_g_s[s], 2, out=g_s[s]).sub_(1)
        else:
            torch.tanh(a_g, out=g_s[s])
        c = torch.mul(f_s[s], C_s[s], out=C_s[s + 1])
        c.addcmul_(i_s[s], g_s[s])
        _tanh(c, TC_s[s], by_sigmoid)
        h = torch.mul(o_s[s], TC_s[s], out=H_s[s + 1])
    return Hf, C_s[T], ((S, V, Cf, TC) if keep else None)


class LSTMRecurrence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, proj, xt_in, w_up, h0, c0, w_t, G, refine, refined_blocks, xform, sink):
        xg = _split(proj, G, xt_in, False)[0]
        bounded = _bounded(proj, G, xt_in, refined_blocks, xform, w_up)
        kernels = triton_steps.applies(xg)  # decided once: the backward runs the same way
        Hf, c_n, (S, V, Cf, TC) = lstm_forward(xg, _with_offset(bounded, xform), h0, c0, w_t, refine, refined_blocks, True, kernels)
        ctx.save_for_backward(bounded if _keeps_bounded(refine, xform) else None, xt_in, w_t, S, V, Cf, TC, Hf, *_low_rank_saved(proj, G, w_up))
        ctx.cfg = (G, proj.shape[-1], refine, refined_blocks, xform, kernels)
        if sink is not None:
            sink["sigmoid"], sink["value"], sink["state"] = S, V, Cf
        return Hf, c_n

    @staticmethod
    @once_differentiable
    def backward(ctx, d_hf, d_cn):
        bounded, xt_in, w_t, S, V, Cf, TC, Hf, codes, w_up = ctx.saved_tensors
        G, N, refine, refined_blocks, xform, kernels = ctx.cfg
        D, T, B, _ = S.shape
        H = G // 4
        w_hh = w_t.transpose(1, 2).contiguous()
        r5 = _mul_factor(bounded, refine, xform)
        i, f, g, o = _values(S, V, refined_blocks, 4, H, also=(2,))
        c_prev, h = Cf[:, :-1], Hf[:, 1:]
        # K becomes, in place: [σ_i'·g, σ_f'·c_prev, (1 - g²)·i, σ_o'·tanh c] so that
        # dA_{i,f,g} = dc·K_{i,f,g} and dA_o = dh·K_o. The torch ops overwrite each step's K with its dA
        # (K lives in d_proj: one buffer fewer to allocate and fault in); the Triton kernel keeps them apart.
        d_proj = S.new_empty(D, T, B, N)
        dA = d_proj[..., :G]
        K = _slope(S, r5, refine, 4, _refined_slice(refined_blocks), out=None if kernels else dA)
        K_i, K_f, K_g, K_o = (_block(K, k, H) for k in range(4))
        K_i.mul_(g)
        K_f.mul_(c_prev)
        torch.mul(g, g, out=K_g).neg_().add_(1).mul_(i)
        K_o.mul_(TC)
        P = torch.addcmul(o, h, TC, value=-1)  # o (1 - tanh² c) = o - h tanh c
        DC, DH = S.new_empty(D, T, B, H), S.new_empty(D, T, B, H)
        d_h_s, DC_s, DH_s, P_s, f_s, dA_s = (t.unbind(1) for t in (d_hf[:, 1:], DC, DH, P, f, dA))
        if kernels:
            # One kernel and one product per step (triton_steps.py); dc is carried in a buffer of its own.
            dc = d_cn.clone(memory_format=torch.contiguous_format)
            dh_rec = None
            d_h_s = d_h_s if d_hf.stride(-1) == 1 else d_hf[:, 1:].contiguous().unbind(1)
            K_s = K.unbind(1)
            for s in range(T - 1, -1, -1):
                triton_steps.lstm_backward_step(d_h_s[s], dh_rec, dc, P_s[s], K_s[s], f_s[s], DH_s[s], DC_s[s], dA_s[s])
                dh_rec = torch.bmm(dA_s[s], w_hh)
        else:
            dc, dh_rec = _lstm_backward_ops(d_cn, d_h_s, DH_s, DC_s, P_s, K, dA, f_s, w_hh)
        dh0 = dh_rec + d_hf[:, 0]
        h_prev = Hf[:, :-1].reshape(D, T * B, H)
        d_w_t = torch.bmm(h_prev.transpose(1, 2), dA.reshape(D, T * B, G))
        d_xt = None
        if refined_blocks:
            parts = {0: (DC, g), 1: (DC, c_prev), 3: (DH, TC)}
            terms = [(*parts[k], _block(S, k, H)) for k in refined_blocks]
            # P and, once the terms are summed, DH are spent: they hold x̃'s gradient and the bound's temporary
            # (two (D, T, B, H) buffers fewer to allocate and fault in)
            d_xt = _accumulate_xt(terms, refine, _xt_grad_target(d_proj, G, xt_in, w_up, spare=P))
            _bound_grad(d_xt, bounded, xform, scratch=DH)
        d_w_up = _low_rank_grad(d_xt, codes, w_up, d_proj, G)
        d_xt_in = d_xt if (refined_blocks and N == G) else None
        return d_proj, d_xt_in, d_w_up, dh0, dc, d_w_t, None, None, None, None, None


def _step_dh(d_h: Tensor, dh_rec: Tensor | None, out: Tensor) -> Tensor:
    """A step's ``dh`` into ``out``: the output's gradient plus the next step's through ``W_hh`` (none at the last step)."""
    return out.copy_(d_h) if dh_rec is None else torch.add(d_h, dh_rec, out=out)


def _lstm_backward_ops(dc, d_h_s, DH_s, DC_s, P_s, K, dA, f_s, w_hh):
    """The backward's loop in torch ops (six per step): returns the gradients of c0 and, through W_hh, of h0."""
    D, T, B, G = K.shape
    H = G // 4
    K3_s = [t.view(D, B, 3, H) for t in K[..., : 3 * H].unbind(1)]
    dA3_s = [t.view(D, B, 3, H) for t in dA[..., : 3 * H].unbind(1)]
    K_o_s, dA_o_s, dA_s = _block(K, 3, H).unbind(1), _block(dA, 3, H).unbind(1), dA.unbind(1)
    dh_rec = None
    for s in range(T - 1, -1, -1):
        dh = _step_dh(d_h_s[s], dh_rec, DH_s[s])
        dcs = torch.addcmul(dc, dh, P_s[s], out=DC_s[s])
        torch.mul(K3_s[s], dcs.unsqueeze(2), out=dA3_s[s])
        torch.mul(K_o_s[s], dh, out=dA_o_s[s])
        dh_rec = torch.bmm(dA_s[s], w_hh)
        dc = dcs * f_s[s]
    return dc, dh_rec


# ------------------------------------------------------------------ GRU (blocks r, z, n)


def gru_forward(xg, xt, h0, w_t, b_hh, refine, refined_blocks, keep):
    """GRU over (D, T, B, 3H) gate inputs ``W_ih x + b_ih`` (``b_hh`` stays inside ``r ⊙``)."""
    D, T, B, G = xg.shape
    H = G // 3
    sl = _refined_slice(refined_blocks) if xt is not None else None
    shape = (D, T, B) if keep else (D, B)
    bias = b_hh.unsqueeze(1)
    HH = xg.new_empty(*shape, G)  # W_hh h + b_hh
    S = xg.new_empty(*shape, 2 * H)
    V = S if sl is None else xg.new_empty(*shape, 2 * H)
    Nn = xg.new_empty(*shape, H)
    Hf = _with_initial(h0, T)
    H_s = Hf.unbind(1)
    xrz_s, xn_s = xg[..., : 2 * H].unbind(1), xg[..., 2 * H :].unbind(1)
    HH_s, S_s, N_s = (_steps(t, keep, T) for t in (HH, S, Nn))
    hrz_s, hn_s = _steps(HH[..., : 2 * H], keep, T), _steps(HH[..., 2 * H :], keep, T)
    rg_s, z_s = (_steps(t, keep, T) for t in _values(S, V, refined_blocks, 2, H))
    if sl is not None:
        S2_s, V2_s = (_steps(t.view(*t.shape[:-1], 2, H)[..., sl, :], keep, T) for t in (S, V))
        r_s = xt.unsqueeze(-2).unbind(1)
    by_sigmoid = sigmoid_tanh_applies(h0)  # tanh through the sigmoid (`tanh`), decided once as in the LSTM
    h = h0
    for s in range(T):
        torch.baddbmm(bias, h, w_t, out=HH_s[s])
        torch.add(xrz_s[s], hrz_s[s], out=S_s[s]).sigmoid_()
        if sl is not None:
            _combine(S2_s[s], r_s[s], refine, V2_s[s])
        n = torch.addcmul(xn_s[s], rg_s[s], hn_s[s], out=N_s[s])
        _tanh(n, n, by_sigmoid)
        h = torch.lerp(n, h, z_s[s], out=H_s[s + 1])  # (1 - z) n + z h
    return Hf, ((S, V, HH, Nn) if keep else None)


class GRURecurrence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, proj, xt_in, w_up, h0, w_t, b_hh, G, refine, refined_blocks, xform, sink):
        xg = _split(proj, G, xt_in, False)[0]
        bounded = _bounded(proj, G, xt_in, refined_blocks, xform, w_up)
        Hf, (S, V, HH, Nn) = gru_forward(xg, _with_offset(bounded, xform), h0, w_t, b_hh, refine, refined_blocks, keep=True)
        ctx.save_for_backward(bounded if _keeps_bounded(refine, xform) else None, xt_in, w_t, S, V, HH, Nn, Hf, *_low_rank_saved(proj, G, w_up))
        ctx.cfg = (G, proj.shape[-1], refine, refined_blocks, xform)
        if sink is not None:
            sink["sigmoid"], sink["value"], sink["state"] = S, V, Hf
        return Hf

    @staticmethod
    @once_differentiable
    def backward(ctx, d_hf):
        bounded, xt_in, w_t, S, V, HH, Nn, Hf, codes, w_up = ctx.saved_tensors
        G, N, refine, refined_blocks, xform = ctx.cfg
        D, T, B, _ = HH.shape
        H = G // 3
        w_hh = w_t.transpose(1, 2).contiguous()
        r5 = _mul_factor(bounded, refine, xform)
        rg, z = _values(S, V, refined_blocks, 2, H)
        hn = HH[..., 2 * H :]
        h_prev = Hf[:, :-1]
        hmn = h_prev - Nn
        omz = 1 - z
        Q = torch.addcmul(omz, omz * Nn, Nn, value=-1)  # d n_pre / d h' = (1 - z)(1 - n²)
        K = _slope(S, r5, refine, 2, _refined_slice(refined_blocks))  # becomes [σ_r'·hn·Q, σ_z'·(h - n)]
        _block(K, 0, H).mul_(hn).mul_(Q)
        _block(K, 1, H).mul_(hmn)
        d_proj = S.new_empty(D, T, B, N)
        dHH = S.new_empty(D, T, B, G)
        DH = S.new_empty(D, T, B, H)
        DNP = d_proj[..., 2 * H : G]
        d_h_s, DH_s, dHH_s, DNP_s, Q_s, rg_s, z_s, dHHn_s = (
            t.unbind(1) for t in (d_hf[:, 1:], DH, dHH, DNP, Q, rg, z, dHH[..., 2 * H :])
        )
        K2_s = [t.view(D, B, 2, H) for t in K.unbind(1)]
        dHH2_s = [t.view(D, B, 2, H) for t in dHH[..., : 2 * H].unbind(1)]
        dh_rec = None
        for s in range(T - 1, -1, -1):
            dh = _step_dh(d_h_s[s], dh_rec, DH_s[s])
            torch.mul(K2_s[s], dh.unsqueeze(2), out=dHH2_s[s])
            dnp = torch.mul(dh, Q_s[s], out=DNP_s[s])
            torch.mul(dnp, rg_s[s], out=dHHn_s[s])
            dh_rec = torch.baddbmm(dh * z_s[s], dHH_s[s], w_hh)
        dh0 = dh_rec + d_hf[:, 0]
        d_proj[..., : 2 * H] = dHH[..., : 2 * H]
        d_w_t = torch.bmm(h_prev.reshape(D, T * B, H).transpose(1, 2), dHH.view(D, T * B, G))
        d_b_hh = dHH.sum((1, 2))
        d_xt = None
        if refined_blocks:
            parts = {0: (DNP, hn), 1: (DH, hmn)}
            terms = [(*parts[k], _block(S, k, H)) for k in refined_blocks]
            d_xt = _accumulate_xt(terms, refine, _xt_grad_target(d_proj, G, xt_in, w_up))
            _bound_grad(d_xt, bounded, xform)
        d_w_up = _low_rank_grad(d_xt, codes, w_up, d_proj, G)
        d_xt_in = d_xt if (refined_blocks and N == G) else None
        return d_proj, d_xt_in, d_w_up, dh0, d_w_t, d_b_hh, None, None, None, None, None


# ------------------------------------------------------------------ MGU (blocks f, n)


def mgu_forward(xg, xt, h0, w_t, refine, keep):
    """MGU over (D, T, B, 2H) gate inputs ``W_ih x + b_ih + b_hh`` (its one sigmoid gate f is refined when ``xt`` is given)."""
    D, T, B, G = xg.shape
    H = G // 2
    uf_t, un_t = w_t[..., :H], w_t[..., H:]
    shape = (D, T, B) if keep else (D, B)
    S = xg.new_empty(*shape, H)
    V = S if xt is None else xg.new_empty(*shape, H)
    FH, Nn = xg.new_empty(*shape, H), xg.new_empty(*shape, H)
    Hf = _with_initial(h0, T)
    H_s = Hf.unbind(1)
    xf_s, xn_s = xg[..., :H].unbind(1), xg[..., H:].unbind(1)
    S_s, V_s, FH_s, N_s = (_steps(t, keep, T) for t in (S, V, FH, Nn))
    r_s = None if xt is None else xt.unbind(1)
    by_sigmoid = sigmoid_tanh_applies(h0)  # tanh through the sigmoid (`tanh`), decided once as in the LSTM
    h = h0
    for s in range(T):
        f = torch.baddbmm(xf_s[s], h, uf_t, out=S_s[s]).sigmoid_()
        if r_s is not None:
            f = _combine(f, r_s[s], refine, V_s[s])
        fh = torch.mul(f, h, out=FH_s[s])
        _tanh(torch.baddbmm(xn_s[s], fh, un_t, out=N_s[s]), N_s[s], by_sigmoid)
        h = torch.lerp(h, N_s[s], f, out=H_s[s + 1])  # (1 - f) h + f n
    return Hf, ((S, V, FH, Nn) if keep else None)


class MGURecurrence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, proj, xt_in, w_up, h0, w_t, G, refine, refined_blocks, xform, sink):
        xg = _split(proj, G, xt_in, False)[0]
        bounded = _bounded(proj, G, xt_in, refined_blocks, xform, w_up)
        Hf, (S, V, FH, Nn) = mgu_forward(xg, _with_offset(bounded, xform), h0, w_t, refine, keep=True)
        ctx.save_for_backward(bounded if _keeps_bounded(refine, xform) else None, xt_in, w_t, S, V, FH, Nn, Hf, *_low_rank_saved(proj, G, w_up))
        ctx.cfg = (G, proj.shape[-1], refine, refined_blocks, xform)
        if sink is not None:
            sink["sigmoid"], sink["value"], sink["state"] = S, V, Hf
        return Hf

    @staticmethod
    @once_differentiable
    def backward(ctx, d_hf):
        bounded, xt_in, w_t, S, V, FH, Nn, Hf, codes, w_up = ctx.saved_tensors
        G, N, refine, refined_blocks, xform = ctx.cfg
        D, T, B, H = S.shape
        uf, un = (w_t[..., k * H : (k + 1) * H].transpose(1, 2).contiguous() for k in range(2))
        K = _slope(S, _mul_factor(bounded, refine, xform), refine, 1, _refined_slice(refined_blocks))
        f = V
        h_prev = Hf[:, :-1]
        Qn = torch.addcmul(f, f * Nn, Nn, value=-1)  # f (1 - n²)
        NH = Nn - h_prev
        omf = 1 - f
        d_proj = S.new_empty(D, T, B, N)
        DAF, DNP = d_proj[..., :H], d_proj[..., H:G]
        DF, DH = S.new_empty(D, T, B, H), S.new_empty(D, T, B, H)
        d_h_s, DNP_s, DF_s, DAF_s, DH_s, Qn_s, NH_s, hp_s, K_s, f_s, omf_s = (
            t.unbind(1) for t in (d_hf[:, 1:], DNP, DF, DAF, DH, Qn, NH, h_prev, K, f, omf)
        )
        dh_rec = None
        for s in range(T - 1, -1, -1):
            dh = _step_dh(d_h_s[s], dh_rec, DH_s[s])
            dnp = torch.mul(dh, Qn_s[s], out=DNP_s[s])
            dfh = torch.bmm(dnp, un)
            df = torch.mul(dh, NH_s[s], out=DF_s[s])
            df.addcmul_(dfh, hp_s[s])
            daf = torch.mul(df, K_s[s], out=DAF_s[s])
            dh_rec = dh * omf_s[s]
            dh_rec.addcmul_(dfh, f_s[s])
            dh_rec = torch.baddbmm(dh_rec, daf, uf)
        dh0 = dh_rec + d_hf[:, 0]
        d_w_t = torch.cat(
            (
                torch.bmm(h_prev.reshape(D, T * B, H).transpose(1, 2), DAF.reshape(D, T * B, H)),
                torch.bmm(FH.view(D, T * B, H).transpose(1, 2), DNP.reshape(D, T * B, H)),
            ),
            -1,
        )
        d_xt = None
        if refined_blocks:
            d_xt = _accumulate_xt([(DF, 1.0, S)], refine, _xt_grad_target(d_proj, G, xt_in, w_up))
            _bound_grad(d_xt, bounded, xform)
        d_w_up = _low_rank_grad(d_xt, codes, w_up, d_proj, G)
        d_xt_in = d_xt if (refined_blocks and N == G) else None
        return d_proj, d_xt_in, d_w_up, dh0, d_w_t, None, None, None, None, None


# ------------------------------------------------------------------ layer driver


def prepare_weights(mode: str, params: list[dict], refined: tuple[str, ...], training: bool = False) -> dict[str, Tensor]:
    """Stack the per-direction parameters into the layout the recurrences use.

    ``w_in`` (D, rows, I) is ``[W_ih; W_refine]``, so one product per direction gives gate inputs
    and ``x̃`` (with a low-rank projection, ``[W_ih; W_down]`` and ``w_up_t`` (D, r, H), so that
    product gives x̃'s codes and one more maps them up): one concatenation of all directions'
    matrices (`projection.InputProjection` takes it in this layout); ``b_in`` folds ``b_hh``
    into ``b_ih`` wherever it is outside every nonlinearity (all but GRU, whose ``b_hn`` sits inside
    ``r ⊙ (...)``); ``w_hh_t`` (D, H, rows) is ``W_hh`` transposed: a contiguous copy for inference
    (a batch-1 product is fastest there, and the copy is cached), a view of the stacked ``W_hh`` for
    ``training`` (at training batches the per-step product reads the view as fast, the backward's
    products take the stack itself, and a transposing copy cost 1.5 ms a layer each way on CPU).
    """
    w_in, b_in, w_hh, b_hh, w_up = [], [], [], [], []
    for p in params:
        b = p["b_ih"] if mode == "gru" else p["b_ih"] + p["b_hh"]
        w_in.append(p["w_ih"])
        if refined and p["w_refine"] is not None:
            # A low-rank projection puts its down map here (x̃'s codes) and applies W_up after the product.
            first = p["w_refine_down"] if p.get("w_refine_down") is not None else p["w_refine"]
            w_in.append(first)
            b = torch.cat((b, b.new_zeros(first.shape[0])), 0)
            if first is not p["w_refine"]:
                w_up.append(p["w_refine"].t())
        b_in.append(b)
        w_hh.append(p["w_hh"] if training else p["w_hh"].t())
        b_hh.append(p["b_hh"])

    def stack(ts):
        return torch.stack(ts) if len(ts) > 1 else ts[0].unsqueeze(0).contiguous()

    D = len(params)
    return {
        "w_in": torch.cat(w_in, 0).view(D, -1, w_in[0].shape[1]),
        "b_in": stack(b_in),
        "w_hh_t": stack(w_hh).transpose(1, 2) if training else stack(w_hh),
        "b_hh": stack(b_hh),
        "w_up_t": stack(w_up) if w_up else None,
    }


def run_layer(mode, x, params, h0, c0, refine, refined, record, prepared=None, xform=("none", 0.0)):
    """Same contract as ``rnn.run_layer_eager``; ``prepared`` may pass cached ``prepare_weights``.

    Runs the autograd Function when a gradient is needed, else the bare loop (no buffers kept).
    """
    D = len(params)
    H = params[0]["w_hh"].shape[1]
    G = len(GATE_ORDER[mode]) * H
    w = prepared if prepared is not None else prepare_weights(mode, params, refined, training=True)
    if torch.is_grad_enabled() and any(t.requires_grad for t in (x, w["w_in"], w["b_in"])):
        proj = InputProjection.apply(x, w["w_in"], w["b_in"])
    else:
        proj = project(directions(x, D), w["w_in"], w["b_in"])
    blocks = GATE_ORDER[mode] if mode == "lstm" else SIGMOID_GATES[mode]
    refined_blocks = tuple(k for k, name in enumerate(blocks) if name in refined)
    xt_in = directions(x, D) if (refined and proj.shape[-1] == G) else None  # the identity case: x̃ is x itself
    w_up = w.get("w_up_t")
    sink = {} if record else None
    grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (proj, h0, c0, w["w_hh_t"], w["b_hh"], xt_in, w_up)
    )
    c_n = None
    if grad:
        args = (G, refine, refined_blocks, xform, sink)
        if mode == "lstm":
            Hf, c_n = LSTMRecurrence.apply(proj, xt_in, w_up, h0, c0, w["w_hh_t"], *args)
        elif mode == "gru":
            Hf = GRURecurrence.apply(proj, xt_in, w_up, h0, w["w_hh_t"], w["b_hh"], *args)
        else:
            Hf = MGURecurrence.apply(proj, xt_in, w_up, h0, w["w_hh_t"], *args)
    else:
        xg, xt = _split(proj, G, xt_in, bool(refined_blocks), w_up)
        xt = short_connection(xt, xform)
        # Both directions share each step's product unless their recurrent matrices together
        # outgrow a typical per-core L2 cache; then one direction after the other is faster
        # on CPU (measured: LSTM hidden 256, batch 1: 1.5 vs 2.0 ms per layer).
        w_hh_t = w["w_hh_t"]
        split = D == 2 and x.device.type == "cpu" and w_hh_t.numel() * w_hh_t.element_size() >= _SPLIT_BYTES
        parts = [slice(0, 1), slice(1, 2)] if split else [slice(0, D)]
        outs = []
        for d in parts:
            args = (xg[d], None if xt is None else xt[d], h0[d])
            if mode == "lstm":
                outs.append(lstm_forward(*args, c0[d], w_hh_t[d], refine, refined_blocks, record, triton_steps.applies(x)))
            elif mode == "gru":
                outs.append(gru_forward(*args, w_hh_t[d], w["b_hh"][d], refine, refined_blocks, keep=record))
            else:
                outs.append(mgu_forward(*args, w_hh_t[d], refine, keep=record))
        cat = (lambda ts: ts[0]) if len(outs) == 1 else (lambda ts: torch.cat(ts, 0))
        Hf = cat([o[0] for o in outs])
        if mode == "lstm":
            c_n = cat([o[1] for o in outs])
        if record:
            sink["sigmoid"], sink["value"] = (cat([o[-1][k] for o in outs]) for k in (0, 1))
            sink["state"] = cat([o[-1][2] for o in outs]) if mode == "lstm" else Hf
    hs = Hf[:, 1:]
    h_n = Hf[:, -1]
    out = hs[0] if D == 1 else torch.cat((hs[0], hs[1].flip(0)), -1)
    if not record:
        return out, h_n, c_n, {}, None
    return out, h_n, c_n, _recorded_gates(mode, sink, blocks, refined_blocks, H, D), _in_time_order(sink["state"][:, 1:].detach(), D)


_SPLIT_BYTES = 2 * 1024 * 1024


def _recorded_gates(mode, sink, blocks, refined_blocks, H, D):
    gates = {}
    values = _values(sink["sigmoid"], sink["value"], refined_blocks, len(blocks), H)
    for k, name in enumerate(blocks):
        if name not in SIGMOID_GATES[mode]:
            continue
        sigmoid = _block(sink["sigmoid"], k, H)
        gates[name] = tuple(_in_time_order(t.detach(), D) for t in (sigmoid, values[k]))
    return gates


def _in_time_order(t: Tensor, D: int) -> Tensor:
    """A (D, T, ...) copy with the reverse direction's steps put back in time order."""
    return torch.stack((t[0], t[1].flip(0))) if D == 2 else t.clone()
