"""Fast path: one autograd.Function per layer that runs the whole recurrence.

What makes it fast on CPU (where per-op dispatch and memory traffic dominate):

* the input side ``W_ih x_t + b`` of every time step and the refinement projection
  ``x̃_t = W_refine x_t`` come from one batched matrix product per layer, outside the
  loop (``prepare_weights`` stacks the matrices); its gradient is built in one buffer;
* both directions advance together: their recurrent products are one ``bmm`` over a
  leading direction axis (the reverse direction sees its input flipped in time);
* the loops write into preallocated buffers with ``out=``, record nothing for autograd,
  and without gradients reuse one scratch buffer per quantity instead of keeping T;
* the backward is written by hand: per step only the few ops the recurrence forces
  (about six), the per-step factors (σ', products of saved activations) computed for all
  steps at once and in place, and every weight gradient in one product afterwards.

Everything here is checked against the step-by-step path in ``cells.py`` by the tests
(values, gradients, ``gradcheck`` in float64).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .gates import GATE_ORDER, SIGMOID_GATES


def supports(x: Tensor) -> bool:
    """The fused path handles every floating dtype and device the tensor ops support."""
    return x.is_floating_point()


# ------------------------------------------------------------------ shared helpers


def short_connection(xt: Tensor | None, xform: tuple[str, float]) -> Tensor | None:
    """x̃ as the gates see it: ``offset + bound(x̃)`` (``xform = (bound, offset)``).

    ``bound`` "tanh" keeps the short connection in (-1, 1); ``offset`` is 1 for a
    start-as-vanilla "mul" (factor ``1 + x̃``), else 0. Returns ``xt`` itself when both are off.
    """
    if xt is None:
        return None
    bound, offset = xform
    if bound == "tanh":
        xt = torch.tanh(xt)
    if offset:
        xt = xt + offset
    return xt


def _xt_raw(proj: Tensor | None, G: int, xt_in: Tensor | None, refined_blocks, refine: str, xform) -> Tensor | None:
    """In a backward: the untransformed x̃ (projection block or layer input), when it is needed
    (for "mul", whose slope involves x̃, or for a tanh bound, whose derivative does)."""
    if not refined_blocks or (refine != "mul" and xform[0] == "none"):
        return None
    return _split(proj, G, xt_in, True)[1]


def _bound_grad(d_xt: Tensor, xt_raw: Tensor | None, xform) -> Tensor:
    """Chain a gradient reaching the bounded x̃ back through tanh, in place."""
    if xform[0] == "tanh":
        t = torch.tanh(xt_raw)
        d_xt.mul_(torch.addcmul(torch.ones_like(t), t, t, value=-1))
    return d_xt


def _refine_factor(xt: Tensor | None, mask: tuple[float, ...], refine: str) -> Tensor | None:
    """Per gate block, what the sigmoid is combined with: (D, T, B, blocks, H), maybe expanded.

    ``mask`` has one entry per row block of the gate tensor: 1 for a refined gate, 0 for a
    block left alone (the combination is then ``+ 0`` or ``× 1``).
    """
    if xt is None:
        return None
    blocks = len(mask)
    xt5 = xt.unsqueeze(-2)
    if all(mask):
        return xt5.expand(*xt.shape[:-1], blocks, xt.shape[-1])
    m = xt.new_tensor(mask).view(blocks, 1)
    return xt5 * m if refine == "add" else torch.addcmul(1 - m, xt5, m)


def _combine(sig: Tensor, r: Tensor, refine: str, out: Tensor) -> Tensor:
    if refine == "add":
        return torch.add(sig, r, out=out)
    return torch.mul(sig, r, out=out)


def _slope(S: Tensor, r: Tensor | None, refine: str, blocks: int) -> Tensor:
    """d(gate value)/d(pre-activation) for every block: σ(1 - σ), times x̃ for "mul"."""
    K = torch.addcmul(S, S, S, value=-1)
    if r is not None and refine == "mul":
        K.view(*S.shape[:-1], blocks, -1).mul_(r)
    return K


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


def _steps(t: Tensor, keep: bool, T: int) -> list[Tensor]:
    """Per-step views of a (D, T, ...) buffer, or the same (D, ...) scratch tensor T times."""
    return list(t.unbind(1)) if keep else [t] * T


def _block(t: Tensor, k: int, H: int) -> Tensor:
    return t[..., k * H : (k + 1) * H]


def _split(proj: Tensor, G: int, xt_in: Tensor | None, refined: bool):
    """Gate inputs and x̃ from the joint projection (x̃ is ``xt_in`` in the identity case)."""
    xg = proj if proj.shape[-1] == G else proj[..., :G]
    if not refined:
        return xg, None
    return xg, (proj[..., G:] if proj.shape[-1] > G else xt_in)


def _with_initial(first: Tensor, T: int) -> Tensor:
    """(D, T + 1, B, H) buffer whose slot 0 holds the initial state."""
    buf = first.new_empty(first.shape[0], T + 1, *first.shape[1:])
    buf[:, 0] = first
    return buf


def _xt_grad_target(d_proj: Tensor, G: int, xt_in: Tensor | None) -> Tensor:
    """Where the gradient of x̃ goes: the projection's block of ``d_proj``, or a new tensor."""
    return d_proj[..., G:] if d_proj.shape[-1] > G else torch.empty_like(xt_in)


# ------------------------------------------------------------------ LSTM (blocks i, f, g, o)


def lstm_forward(xg, xt, h0, c0, w_t, refine, mask, keep):
    """LSTM over (D, T, B, 4H) gate inputs. Returns (H_full, c_n, saved): H_full is
    (D, T+1, B, H) with h0 in slot 0; saved = (S, V, C_full, tanh c) if ``keep``."""
    D, T, B, G = xg.shape
    H = G // 4
    r = _refine_factor(xt, mask, refine)
    shape = (D, T, B) if keep else (D, B)
    a = xg.new_empty(D, B, G)
    a_g = _block(a, 2, H)
    S = xg.new_empty(*shape, G)  # sigmoids (the g block is scratch)
    V = S if r is None else xg.new_empty(*shape, G)  # gate values; tanh candidate in the g block
    TC = xg.new_empty(*shape, H)
    Hf = _with_initial(h0, T)
    Cf = _with_initial(c0, T) if keep else None
    C_s = Cf.unbind(1) if keep else [c0.clone()] * (T + 1)
    xg_s, H_s = xg.unbind(1), Hf.unbind(1)
    S_s, TC_s = _steps(S, keep, T), _steps(TC, keep, T)
    i_s, f_s, g_s, o_s = (_steps(_block(V, k, H), keep, T) for k in range(4))
    if r is not None:
        S4_s, V4_s = (_steps(t.view(*t.shape[:-1], 4, H), keep, T) for t in (S, V))
        r_s = r.unbind(1)
    h = h0
    for s in range(T):
        torch.baddbmm(xg_s[s], h, w_t, out=a)
        torch.sigmoid(a, out=S_s[s])
        if r is not None:
            _combine(S4_s[s], r_s[s], refine, V4_s[s])
        torch.tanh(a_g, out=g_s[s])
        c = torch.mul(f_s[s], C_s[s], out=C_s[s + 1])
        c.addcmul_(i_s[s], g_s[s])
        torch.tanh(c, out=TC_s[s])
        h = torch.mul(o_s[s], TC_s[s], out=H_s[s + 1])
    return Hf, C_s[T], ((S, V, Cf, TC) if keep else None)


class LSTMRecurrence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, proj, xt_in, h0, c0, w_t, G, refine, mask, refined_blocks, xform, sink):
        xg, xt = _split(proj, G, xt_in, bool(refined_blocks))
        xt = short_connection(xt, xform)
        Hf, c_n, (S, V, Cf, TC) = lstm_forward(xg, xt, h0, c0, w_t, refine, mask, keep=True)
        ctx.save_for_backward(proj if _keeps_proj(refine, xform) else None, xt_in, w_t, S, V, Cf, TC, Hf)
        ctx.cfg = (G, proj.shape[-1], refine, mask, refined_blocks, xform)
        if sink is not None:
            sink["sigmoid"], sink["value"], sink["state"] = S, V, Cf
        return Hf, c_n

    @staticmethod
    @once_differentiable
    def backward(ctx, d_hf, d_cn):
        proj, xt_in, w_t, S, V, Cf, TC, Hf = ctx.saved_tensors
        G, N, refine, mask, refined_blocks, xform = ctx.cfg
        D, T, B, _ = S.shape
        H = G // 4
        w_hh = w_t.transpose(1, 2).contiguous()
        xt_raw = _xt_raw(proj, G, xt_in, refined_blocks, refine, xform)
        r = None
        if refine == "mul" and refined_blocks:
            r = _refine_factor(short_connection(xt_raw, xform), mask, refine)
        i, f, g, o = (_block(V, k, H) for k in range(4))
        c_prev, h = Cf[:, :-1], Hf[:, 1:]
        # K becomes, in place: [σ_i'·g, σ_f'·c_prev, (1 - g²)·i, σ_o'·tanh c] so that
        # dA_{i,f,g} = dc·K_{i,f,g} and dA_o = dh·K_o.
        K = _slope(S, r, refine, 4)
        K_i, K_f, K_g, K_o = (_block(K, k, H) for k in range(4))
        K_i.mul_(g)
        K_f.mul_(c_prev)
        torch.mul(g, g, out=K_g).neg_().add_(1).mul_(i)
        K_o.mul_(TC)
        P = torch.addcmul(o, h, TC, value=-1)  # o (1 - tanh² c) = o - h tanh c
        d_proj = S.new_empty(D, T, B, N)
        dA = d_proj[..., :G]
        DC, DH = S.new_empty(D, T, B, H), S.new_empty(D, T, B, H)
        d_h_s, DC_s, DH_s, P_s, f_s, dA_s, K_o_s, dA_o_s = (
            t.unbind(1) for t in (d_hf[:, 1:], DC, DH, P, f, dA, K_o, _block(dA, 3, H))
        )
        K3_s = [t.view(D, B, 3, H) for t in K[..., : 3 * H].unbind(1)]
        dA3_s = [t.view(D, B, 3, H) for t in dA[..., : 3 * H].unbind(1)]
        dc = d_cn
        dh_rec = None
        for s in range(T - 1, -1, -1):
            dh = DH_s[s]
            if dh_rec is None:
                dh.copy_(d_h_s[s])
            else:
                torch.add(d_h_s[s], dh_rec, out=dh)
            dcs = torch.addcmul(dc, dh, P_s[s], out=DC_s[s])
            torch.mul(K3_s[s], dcs.unsqueeze(2), out=dA3_s[s])
            torch.mul(K_o_s[s], dh, out=dA_o_s[s])
            dh_rec = torch.bmm(dA_s[s], w_hh)
            dc = dcs * f_s[s]
        dh0 = dh_rec + d_hf[:, 0]
        h_prev = Hf[:, :-1].reshape(D, T * B, H)
        d_w_t = torch.bmm(h_prev.transpose(1, 2), dA.reshape(D, T * B, G))
        d_xt = None
        if refined_blocks:
            parts = {0: (DC, g), 1: (DC, c_prev), 3: (DH, TC)}
            terms = [(*parts[k], _block(S, k, H)) for k in refined_blocks]
            d_xt = _accumulate_xt(terms, refine, _xt_grad_target(d_proj, G, xt_in))
            _bound_grad(d_xt, xt_raw, xform)
        d_xt_in = d_xt if (refined_blocks and N == G) else None
        return d_proj, d_xt_in, dh0, dc, d_w_t, None, None, None, None, None, None


# ------------------------------------------------------------------ GRU (blocks r, z, n)


def gru_forward(xg, xt, h0, w_t, b_hh, refine, mask, keep):
    """GRU over (D, T, B, 3H) gate inputs ``W_ih x + b_ih`` (``b_hh`` stays inside ``r ⊙``)."""
    D, T, B, G = xg.shape
    H = G // 3
    r = _refine_factor(xt, mask, refine)
    shape = (D, T, B) if keep else (D, B)
    bias = b_hh.unsqueeze(1)
    HH = xg.new_empty(*shape, G)  # W_hh h + b_hh
    S = xg.new_empty(*shape, 2 * H)
    V = S if r is None else xg.new_empty(*shape, 2 * H)
    Nn = xg.new_empty(*shape, H)
    Hf = _with_initial(h0, T)
    H_s = Hf.unbind(1)
    xrz_s, xn_s = xg[..., : 2 * H].unbind(1), xg[..., 2 * H :].unbind(1)
    HH_s, S_s, N_s = (_steps(t, keep, T) for t in (HH, S, Nn))
    hrz_s, hn_s = _steps(HH[..., : 2 * H], keep, T), _steps(HH[..., 2 * H :], keep, T)
    rg_s, z_s = (_steps(_block(V, k, H), keep, T) for k in range(2))
    if r is not None:
        S2_s, V2_s = (_steps(t.view(*t.shape[:-1], 2, H), keep, T) for t in (S, V))
        r_s = r.unbind(1)
    h = h0
    for s in range(T):
        torch.baddbmm(bias, h, w_t, out=HH_s[s])
        torch.add(xrz_s[s], hrz_s[s], out=S_s[s]).sigmoid_()
        if r is not None:
            _combine(S2_s[s], r_s[s], refine, V2_s[s])
        n = torch.addcmul(xn_s[s], rg_s[s], hn_s[s], out=N_s[s])
        n.tanh_()
        h = torch.lerp(n, h, z_s[s], out=H_s[s + 1])  # (1 - z) n + z h
    return Hf, ((S, V, HH, Nn) if keep else None)


class GRURecurrence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, proj, xt_in, h0, w_t, b_hh, G, refine, mask, refined_blocks, xform, sink):
        xg, xt = _split(proj, G, xt_in, bool(refined_blocks))
        xt = short_connection(xt, xform)
        Hf, (S, V, HH, Nn) = gru_forward(xg, xt, h0, w_t, b_hh, refine, mask, keep=True)
        ctx.save_for_backward(proj if _keeps_proj(refine, xform) else None, xt_in, w_t, S, V, HH, Nn, Hf)
        ctx.cfg = (G, proj.shape[-1], refine, mask, refined_blocks, xform)
        if sink is not None:
            sink["sigmoid"], sink["value"], sink["state"] = S, V, Hf
        return Hf

    @staticmethod
    @once_differentiable
    def backward(ctx, d_hf):
        proj, xt_in, w_t, S, V, HH, Nn, Hf = ctx.saved_tensors
        G, N, refine, mask, refined_blocks, xform = ctx.cfg
        D, T, B, _ = HH.shape
        H = G // 3
        w_hh = w_t.transpose(1, 2).contiguous()
        xt_raw = _xt_raw(proj, G, xt_in, refined_blocks, refine, xform)
        r = None
        if refine == "mul" and refined_blocks:
            r = _refine_factor(short_connection(xt_raw, xform), mask, refine)
        rg, z = _block(V, 0, H), _block(V, 1, H)
        hn = HH[..., 2 * H :]
        h_prev = Hf[:, :-1]
        hmn = h_prev - Nn
        omz = 1 - z
        Q = torch.addcmul(omz, omz * Nn, Nn, value=-1)  # d n_pre / d h' = (1 - z)(1 - n²)
        K = _slope(S, r, refine, 2)  # becomes [σ_r'·hn·Q, σ_z'·(h - n)]
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
            dh = DH_s[s]
            if dh_rec is None:
                dh.copy_(d_h_s[s])
            else:
                torch.add(d_h_s[s], dh_rec, out=dh)
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
            d_xt = _accumulate_xt(terms, refine, _xt_grad_target(d_proj, G, xt_in))
            _bound_grad(d_xt, xt_raw, xform)
        d_xt_in = d_xt if (refined_blocks and N == G) else None
        return d_proj, d_xt_in, dh0, d_w_t, d_b_hh, None, None, None, None, None, None


# ------------------------------------------------------------------ MGU (blocks f, n)


def mgu_forward(xg, xt, h0, w_t, refine, mask, keep):
    """MGU over (D, T, B, 2H) gate inputs ``W_ih x + b_ih + b_hh``."""
    D, T, B, G = xg.shape
    H = G // 2
    uf_t, un_t = w_t[..., :H], w_t[..., H:]
    r = _refine_factor(xt, mask, refine)
    shape = (D, T, B) if keep else (D, B)
    S = xg.new_empty(*shape, H)
    V = S if r is None else xg.new_empty(*shape, H)
    FH, Nn = xg.new_empty(*shape, H), xg.new_empty(*shape, H)
    Hf = _with_initial(h0, T)
    H_s = Hf.unbind(1)
    xf_s, xn_s = xg[..., :H].unbind(1), xg[..., H:].unbind(1)
    S_s, V_s, FH_s, N_s = (_steps(t, keep, T) for t in (S, V, FH, Nn))
    r_s = None if r is None else r[..., 0, :].unbind(1)
    h = h0
    for s in range(T):
        f = torch.baddbmm(xf_s[s], h, uf_t, out=S_s[s]).sigmoid_()
        if r is not None:
            f = _combine(f, r_s[s], refine, V_s[s])
        fh = torch.mul(f, h, out=FH_s[s])
        torch.baddbmm(xn_s[s], fh, un_t, out=N_s[s]).tanh_()
        h = torch.lerp(h, N_s[s], f, out=H_s[s + 1])  # (1 - f) h + f n
    return Hf, ((S, V, FH, Nn) if keep else None)


class MGURecurrence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, proj, xt_in, h0, w_t, G, refine, mask, refined_blocks, xform, sink):
        xg, xt = _split(proj, G, xt_in, bool(refined_blocks))
        xt = short_connection(xt, xform)
        Hf, (S, V, FH, Nn) = mgu_forward(xg, xt, h0, w_t, refine, mask, keep=True)
        ctx.save_for_backward(proj if _keeps_proj(refine, xform) else None, xt_in, w_t, S, V, FH, Nn, Hf)
        ctx.cfg = (G, proj.shape[-1], refine, mask, refined_blocks, xform)
        if sink is not None:
            sink["sigmoid"], sink["value"], sink["state"] = S, V, Hf
        return Hf

    @staticmethod
    @once_differentiable
    def backward(ctx, d_hf):
        proj, xt_in, w_t, S, V, FH, Nn, Hf = ctx.saved_tensors
        G, N, refine, mask, refined_blocks, xform = ctx.cfg
        D, T, B, H = S.shape
        uf, un = (w_t[..., k * H : (k + 1) * H].transpose(1, 2).contiguous() for k in range(2))
        xt_raw = _xt_raw(proj, G, xt_in, refined_blocks, refine, xform)
        r = None
        if refine == "mul" and refined_blocks:
            r = _refine_factor(short_connection(xt_raw, xform), mask, refine)
        K = _slope(S, r, refine, 1)
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
            dh = DH_s[s]
            if dh_rec is None:
                dh.copy_(d_h_s[s])
            else:
                torch.add(d_h_s[s], dh_rec, out=dh)
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
            d_xt = _accumulate_xt([(DF, 1.0, S)], refine, _xt_grad_target(d_proj, G, xt_in))
            _bound_grad(d_xt, xt_raw, xform)
        d_xt_in = d_xt if (refined_blocks and N == G) else None
        return d_proj, d_xt_in, dh0, d_w_t, None, None, None, None, None, None


# ------------------------------------------------------------------ layer driver


def prepare_weights(mode: str, params: list[dict], refined: tuple[str, ...]) -> dict[str, Tensor]:
    """Stack the per-direction parameters into the layout the recurrences use.

    ``w_in_t`` (D, I, rows) is ``[W_ih; W_refine]`` transposed, so one batched product gives
    gate inputs and ``x̃``; ``b_in`` folds ``b_hh`` into ``b_ih`` wherever it is outside
    every nonlinearity (all but GRU, whose ``b_hn`` sits inside ``r ⊙ (...)``);
    ``w_hh_t`` (D, H, rows) is transposed and contiguous, the layout in which the per-step
    products run fastest.
    """
    w_in, b_in, w_hh, b_hh = [], [], [], []
    for p in params:
        w, b = p["w_ih"], p["b_ih"]
        if mode != "gru":
            b = b + p["b_hh"]
        if refined and p["w_refine"] is not None:
            w = torch.cat((w, p["w_refine"]), 0)
            b = torch.cat((b, b.new_zeros(p["w_refine"].shape[0])), 0)
        w_in.append(w.t())
        b_in.append(b)
        w_hh.append(p["w_hh"].t())
        b_hh.append(p["b_hh"])

    def stack(ts):
        return torch.stack(ts) if len(ts) > 1 else ts[0].unsqueeze(0).contiguous()

    return {"w_in_t": stack(w_in), "b_in": stack(b_in), "w_hh_t": stack(w_hh), "b_hh": stack(b_hh)}


def _keeps_proj(refine: str, xform) -> bool:
    """Whether a backward needs the joint projection (to rebuild x̃): for "mul" and for a bound."""
    return refine == "mul" or xform[0] != "none"


def run_layer(mode, x, params, h0, c0, refine, refined, record, prepared=None, xform=("none", 0.0)):
    """Same contract as ``rnn.run_layer_eager``; ``prepared`` may pass cached ``prepare_weights``.

    Runs the autograd Function when a gradient is needed, else the bare loop (no buffers kept).
    """
    T, B, I = x.shape
    D = len(params)
    H = params[0]["w_hh"].shape[1]
    G = len(GATE_ORDER[mode]) * H
    w = prepared if prepared is not None else prepare_weights(mode, params, refined)
    xd = x.unsqueeze(0) if D == 1 else torch.stack((x, x.flip(0)))
    proj = torch.baddbmm(w["b_in"].unsqueeze(1), xd.reshape(D, T * B, I), w["w_in_t"]).view(D, T, B, -1)
    blocks = GATE_ORDER[mode] if mode == "lstm" else SIGMOID_GATES[mode]
    mask = _mask(mode, refined, blocks)
    refined_blocks = tuple(k for k, name in enumerate(blocks) if name in refined)
    xt_in = xd if (refined and proj.shape[-1] == G) else None
    sink = {} if record else None
    grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (proj, h0, c0, w["w_hh_t"], w["b_hh"], xt_in)
    )
    c_n = None
    if grad:
        args = (G, refine, mask, refined_blocks, xform, sink)
        if mode == "lstm":
            Hf, c_n = LSTMRecurrence.apply(proj, xt_in, h0, c0, w["w_hh_t"], *args)
        elif mode == "gru":
            Hf = GRURecurrence.apply(proj, xt_in, h0, w["w_hh_t"], w["b_hh"], *args)
        else:
            Hf = MGURecurrence.apply(proj, xt_in, h0, w["w_hh_t"], *args)
    else:
        xg, xt = _split(proj, G, xt_in, bool(refined_blocks))
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
                outs.append(lstm_forward(*args, c0[d], w_hh_t[d], refine, mask, keep=record))
            elif mode == "gru":
                outs.append(gru_forward(*args, w_hh_t[d], w["b_hh"][d], refine, mask, keep=record))
            else:
                outs.append(mgu_forward(*args, w_hh_t[d], refine, mask, keep=record))
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
    return out, h_n, c_n, _recorded_gates(mode, sink, blocks, H, D), _in_time_order(sink["state"][:, 1:].detach(), D)


_SPLIT_BYTES = 2 * 1024 * 1024


def _mask(mode: str, refined: tuple[str, ...], blocks: tuple[str, ...]) -> tuple[float, ...]:
    """1 per refined block. The LSTM's g block is overwritten after the combination, so it
    counts as refined whenever all sigmoid gates are (which lets x̃ be broadcast, not copied)."""
    every = set(refined) == set(SIGMOID_GATES[mode])
    return tuple(1.0 if name in refined or (every and name not in SIGMOID_GATES[mode]) else 0.0 for name in blocks)


def _recorded_gates(mode, sink, blocks, H, D):
    gates = {}
    for k, name in enumerate(blocks):
        if name not in SIGMOID_GATES[mode]:
            continue
        gates[name] = tuple(_in_time_order(_block(t, k, H).detach(), D) for t in (sink["sigmoid"], sink["value"]))
    return gates


def _in_time_order(t: Tensor, D: int) -> Tensor:
    """A (D, T, ...) copy with the reverse direction's steps put back in time order."""
    return torch.stack((t[0], t[1].flip(0))) if D == 2 else t.clone()
