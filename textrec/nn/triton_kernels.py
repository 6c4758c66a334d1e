"""Triton kernels of the LSTM recurrence's per-step element-wise work (see ``triton_steps.py``).

Imported only when a step runs on CUDA (or under ``TRITON_INTERPRET=1``), so that the CPU paths and the
command line never load Triton. Each kernel instance handles ``BLOCK`` elements of a (D, B, H) step; a
tensor argument is followed by its direction and row strides (the hidden axis has unit stride).
"""

import triton
import triton.language as tl


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _tanh(x):
    # exp of a non-positive number only: no overflow, and full relative precision near 0 is not needed
    # (the values feed products, compared absolutely).
    e = tl.exp(-2.0 * tl.abs(x))
    y = (1.0 - e) / (1.0 + e)
    return tl.where(x < 0, -y, y)


@triton.jit
def lstm_forward_step(
    XG, s_xg_d, s_xg_b,  # gate inputs W_ih x_t + b of this step, (D, B, 4H)
    HW, s_hw_d, s_hw_b,  # h_{t-1} W_hh, (D, B, 4H)
    R, s_r_d, s_r_b,  # x̃ as the gates see it, (D, B, H); unused without refined gates
    S, s_s_d, s_s_b,  # out: sigmoids of i, f, o, (D, B, 4H)
    V, s_v_d, s_v_b,  # out: refined gates' values and the candidate g (may be S itself)
    CP, s_cp_d, s_cp_b,  # c_{t-1}, (D, B, H)
    C, s_c_d, s_c_b,  # out: c_t (may be CP itself: each element reads its own before writing)
    TC, s_tc_d, s_tc_b,  # out: tanh c_t
    HO, s_h_d, s_h_b,  # out: h_t
    n, B, H,
    REF_I: tl.constexpr, REF_F: tl.constexpr, REF_O: tl.constexpr, MUL: tl.constexpr,
    ACC: tl.constexpr, BLOCK: tl.constexpr,
):
    k = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = k < n
    d = (k // (B * H)).to(tl.int64)  # 64-bit offsets: (D, T, B, ·) buffers can outgrow 2^31 elements
    b = ((k // H) % B).to(tl.int64)
    j = k % H
    xg = XG + d * s_xg_d + b * s_xg_b + j
    hw = HW + d * s_hw_d + b * s_hw_b + j
    a_i = tl.load(xg, mask=m).to(ACC) + tl.load(hw, mask=m).to(ACC)
    a_f = tl.load(xg + H, mask=m).to(ACC) + tl.load(hw + H, mask=m).to(ACC)
    a_g = tl.load(xg + 2 * H, mask=m).to(ACC) + tl.load(hw + 2 * H, mask=m).to(ACC)
    a_o = tl.load(xg + 3 * H, mask=m).to(ACC) + tl.load(hw + 3 * H, mask=m).to(ACC)
    s_i, s_f, s_o = _sigmoid(a_i), _sigmoid(a_f), _sigmoid(a_o)
    g = _tanh(a_g)
    s = S + d * s_s_d + b * s_s_b + j
    v = V + d * s_v_d + b * s_v_b + j
    tl.store(s, s_i.to(S.dtype.element_ty), mask=m)
    tl.store(s + H, s_f.to(S.dtype.element_ty), mask=m)
    tl.store(s + 3 * H, s_o.to(S.dtype.element_ty), mask=m)
    tl.store(v + 2 * H, g.to(V.dtype.element_ty), mask=m)
    if REF_I or REF_F or REF_O:
        r = tl.load(R + d * s_r_d + b * s_r_b + j, mask=m).to(ACC)
        if REF_I:
            if MUL:
                s_i = s_i * r
            else:
                s_i = s_i + r
            tl.store(v, s_i.to(V.dtype.element_ty), mask=m)
        if REF_F:
            if MUL:
                s_f = s_f * r
            else:
                s_f = s_f + r
            tl.store(v + H, s_f.to(V.dtype.element_ty), mask=m)
        if REF_O:
            if MUL:
                s_o = s_o * r
            else:
                s_o = s_o + r
            tl.store(v + 3 * H, s_o.to(V.dtype.element_ty), mask=m)
    c = s_f * tl.load(CP + d * s_cp_d + b * s_cp_b + j, mask=m).to(ACC) + s_i * g
    tc = _tanh(c)
    tl.store(C + d * s_c_d + b * s_c_b + j, c.to(C.dtype.element_ty), mask=m)
    tl.store(TC + d * s_tc_d + b * s_tc_b + j, tc.to(TC.dtype.element_ty), mask=m)
    tl.store(HO + d * s_h_d + b * s_h_b + j, (s_o * tc).to(HO.dtype.element_ty), mask=m)


@triton.jit
def lstm_backward_step(
    DHO, s_dho_d, s_dho_b,  # gradient reaching h_t from outside the recurrence, (D, B, H)
    REC, s_rec_d, s_rec_b,  # gradient reaching h_t through the next step (dA_{t+1} W_hh^T); unused at the last step
    DCC,  # in: dc carried from the next step; out: dc_t · f_t for the step before (contiguous (D, B, H), in place)
    P, s_p_d, s_p_b,  # o (1 - tanh² c)
    K, s_k_d, s_k_b,  # the slopes: dA_{i,f,g} = dc K_{i,f,g}, dA_o = dh K_o, (D, B, 4H)
    F, s_f_d, s_f_b,  # the forget gate's values
    DH, s_dh_d, s_dh_b,  # out: dh_t
    DC, s_dc_d, s_dc_b,  # out: dc_t
    DA, s_da_d, s_da_b,  # out: the gradient of the gate pre-activations, (D, B, 4H)
    n, B, H,
    HAS_REC: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr,
):
    k = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = k < n
    d = (k // (B * H)).to(tl.int64)  # 64-bit offsets: (D, T, B, ·) buffers can outgrow 2^31 elements
    b = ((k // H) % B).to(tl.int64)
    j = k % H
    dh = tl.load(DHO + d * s_dho_d + b * s_dho_b + j, mask=m).to(ACC)
    if HAS_REC:
        dh += tl.load(REC + d * s_rec_d + b * s_rec_b + j, mask=m).to(ACC)
    dcc = DCC + k
    dc = tl.load(dcc, mask=m).to(ACC) + dh * tl.load(P + d * s_p_d + b * s_p_b + j, mask=m).to(ACC)
    tl.store(DH + d * s_dh_d + b * s_dh_b + j, dh.to(DH.dtype.element_ty), mask=m)
    tl.store(DC + d * s_dc_d + b * s_dc_b + j, dc.to(DC.dtype.element_ty), mask=m)
    kk = K + d * s_k_d + b * s_k_b + j
    da = DA + d * s_da_d + b * s_da_b + j
    ty = DA.dtype.element_ty
    tl.store(da, (tl.load(kk, mask=m).to(ACC) * dc).to(ty), mask=m)
    tl.store(da + H, (tl.load(kk + H, mask=m).to(ACC) * dc).to(ty), mask=m)
    tl.store(da + 2 * H, (tl.load(kk + 2 * H, mask=m).to(ACC) * dc).to(ty), mask=m)
    tl.store(da + 3 * H, (tl.load(kk + 3 * H, mask=m).to(ACC) * dh).to(ty), mask=m)
    f = tl.load(F + d * s_f_d + b * s_f_b + j, mask=m).to(ACC)
    tl.store(dcc, (dc * f).to(DCC.dtype.element_ty), mask=m)
