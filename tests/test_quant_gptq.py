"""GPTQ: the solver against an independent (OBS-form) implementation, and GPTQ <= RTN."""

from __future__ import annotations

import copy

import pytest
import torch
from quant_fixtures import calib_tokens, linear_errors, quantized_copy, tiny_llama

from ptq_bench.fixed_order import lapack_threads
from ptq_bench.quant.calibrate import capture_inputs, decoder_layers, quantizable_linears, run_layer
from ptq_bench.quant.gptq import GPTQConfig, gptq_solve
from ptq_bench.quant.ldlq import inverse_hessian_factor
from ptq_bench.quant.primitives import minmax_params, on_grid, quantize_int_zero, quantize_scalar
from ptq_bench.quant.statistics import Hessian


@pytest.fixture(scope="module")
def model():
    return tiny_llama()


@pytest.fixture(scope="module")
def calib():
    return calib_tokens(16, 64)


def correlated_problem(rows=24, cols=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(512, cols, generator=g) @ (torch.randn(cols, cols, generator=g) / cols**0.5 + torch.eye(cols))
    return torch.randn(rows, cols, generator=g), 2 * X.T @ X / X.shape[0]


def obs_gptq(W, H, bits, damp=0.01):
    """Independent GPTQ in its OBS form: explicit inverse, Schur-complement removal of each column."""
    W, H = W.clone(), H.clone()
    H += damp * H.diag().mean() * torch.eye(H.shape[0])
    Hinv = torch.linalg.inv(H.double())
    scale, zero, maxq = minmax_params(W, bits)
    Q, loss = torch.zeros_like(W), 0.0
    for i in range(W.shape[1]):
        Q[:, i] = quantize_scalar(W[:, i], scale, zero, maxq)
        err = (W[:, i] - Q[:, i]).double() / Hinv[i, i]
        loss += float(((W[:, i] - Q[:, i]).double() ** 2).sum() / Hinv[i, i])  # OBS: (w - q)^2 / [H^-1]_ii
        W[:, i + 1:] -= (err[:, None] * Hinv[i, i + 1:][None, :]).float()
        Hinv = Hinv - Hinv[:, i:i + 1] @ Hinv[i:i + 1, :] / Hinv[i, i]
    return Q, loss


def layer_loss(W, Q, H):
    d = (W - Q).double()
    return float(torch.trace(d @ H.double() @ d.T))


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_solver_matches_obs_form(bits):
    W, H = correlated_problem()
    Q, grid, loss = gptq_solve(W, H, bits, group_size=-1, block_size=16)
    ref, ref_loss = obs_gptq(W, H, bits)
    assert on_grid(Q, grid)
    assert (Q - ref).abs().max() < 1e-4 * W.abs().max()
    assert loss == pytest.approx(ref_loss, rel=1e-4)  # the loss the rows report (quant.details.loss_sum)


def test_lazy_blocks_do_not_change_the_result():
    W, H = correlated_problem()
    a, _, _ = gptq_solve(W, H, 3, group_size=16, block_size=1)
    b, _, _ = gptq_solve(W, H, 3, group_size=16, block_size=16)
    c, _, _ = gptq_solve(W, H, 3, group_size=16, block_size=128)
    assert torch.allclose(a, b, atol=1e-5) and torch.allclose(a, c, atol=1e-5)


def _out_of_place_factor(H, damp):
    """The factor as it was computed before it moved into H's storage (and as the reference computes it), on
    the LAPACK thread count the factor is defined on (other tests leave torch on 1 thread)."""
    H = H.clone()
    idx = torch.arange(H.shape[0])
    H[idx, idx] += damp * torch.mean(torch.diag(H))
    with lapack_threads():
        return torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)


@pytest.mark.parametrize(("cols", "damp"), [(48, 0.01), (80, 0.1), (200, 0.01)])
def test_in_place_factor_is_the_out_of_place_chain_bit_for_bit(cols, damp):
    """The factor is computed in H's storage; it must equal chol -> cholesky_inverse -> chol, which reads
    only H's lower triangle, even when H's two triangles differ in the last bit (a gemm's Hessian may).
    At (80, 0.1) a strided and a contiguous diagonal give different damping terms: that case checks the mean
    is summed as the reference sums it (a difference moved the quickstart's GPTQ rows once)."""
    W, H = correlated_problem(cols=cols)
    H = H + torch.triu(torch.full_like(H, 1e-6), 1)  # upper triangle off by a little: must be ignored
    assert torch.equal(inverse_hessian_factor(H.clone(), damp), _out_of_place_factor(H, damp))
    kept = H.clone()
    a, _, _ = gptq_solve(W, H, 3, group_size=16)
    assert torch.equal(H, kept)  # not consumed unless asked
    b, _, _ = gptq_solve(W, H, 3, group_size=16, consume_h=True)
    assert torch.equal(a, b) and not torch.equal(H, kept)


def test_identity_hessian_is_rtn_and_dead_columns_zeroed():
    W, _ = correlated_problem()
    H = torch.eye(W.shape[1])
    Q, _, _ = gptq_solve(W, H, 3, group_size=-1)
    scale, zero, maxq = minmax_params(W, 3)
    assert torch.allclose(Q, quantize_scalar(W, scale[:, None], zero[:, None], maxq))
    H[5, 5] = 0
    Q, grid, _ = gptq_solve(W, H, 3, group_size=-1)
    assert torch.all(Q[:, 5] == 0) and on_grid(Q, grid)


@pytest.mark.parametrize("opts", [{}, {"act_order": True}, {"act_order": True, "group_size": 16},
                                  {"act_order": True, "static_groups": True, "group_size": 16},
                                  {"sym": False, "group_size": 16}])
@pytest.mark.parametrize("bits", [1.58, 2, 3, 4])
def test_solver_beats_rtn_on_real_hessians(model, calib, bits, opts):
    """Per-linear proxy loss tr(dW H dW^T) on layer 0's calibration inputs: GPTQ <= RTN, same grid."""
    if bits == 1.58 and opts.get("sym") is False:
        pytest.skip("ternary grid is symmetric")
    layer = decoder_layers(model)[0]
    inputs = capture_inputs(model, calib)
    stats = {}
    hooks = [m.register_forward_pre_hook(lambda mod, a, n=n: stats.setdefault(n, Hessian(a[0].shape[-1])).add(a[0]))
             for n, m in layer.named_modules() if isinstance(m, torch.nn.Linear)]
    run_layer(layer, inputs.hidden, inputs.calls[0])
    for h in hooks:
        h.remove()
    gs = opts.get("group_size", -1)
    for name, st in stats.items():
        W = layer.get_submodule(name).weight.data
        Q, grid, _ = gptq_solve(W, st.H, bits, **opts)
        assert on_grid(Q, grid)
        rtn = torch.cat([quantize_scalar(W[:, i:i + (gs if gs > 0 else W.shape[1])],
                                         *_col(minmax_params(W[:, i:i + (gs if gs > 0 else W.shape[1])], bits,
                                                             opts.get("sym", True))))
                         for i in range(0, W.shape[1], gs if gs > 0 else W.shape[1])], dim=1)
        assert layer_loss(W, Q, st.H) < layer_loss(W, rtn, st.H), name


def _col(params):
    scale, zero, maxq = params
    return scale[:, None], zero[:, None], maxq


def rtn_model(model, bits):
    """Round-to-nearest on GPTQ's own grid (per-row symmetric min-max): the fair RTN baseline."""
    q = copy.deepcopy(model)
    with torch.no_grad():
        for m in quantizable_linears(q).values():
            m.weight.copy_(quantize_scalar(m.weight, *_col(minmax_params(m.weight, bits))))
    return q


# measured (model seed 0, calib seed 1, 16 x 64 tokens), sum over 14 linears of relative output error
# on the float model's inputs; last column: linears where GPTQ <= RTN:
#   bits  GPTQ    RTN(same grid)  absmax RTN   GPTQ<=RTN
#   4     0.101   0.154           0.171        14/14
#   3     0.480   0.710           0.918        14/14
#   2     2.938   3.766           7.431        13/14
@pytest.mark.parametrize("bits, ratio", [(4, 0.75), (3, 0.75), (2, 0.85)])
def test_gptq_model_layer_errors_below_rtn(model, calib, bits, ratio):
    q, rep = quantized_copy(model, "gptq", calib, w_bits=bits, group_size=-1)
    lin = quantizable_linears(q)
    assert rep.n_linears == 14 and all(on_grid(m.weight, m.ptq_grid) for m in lin.values())
    rows, numel = (sum(f(m.weight) for m in lin.values()) for f in (lambda w: w.shape[0], torch.numel))
    assert rep.effective_bits == pytest.approx(bits + 16 * rows / numel)  # one fp16 scale per row
    e_gptq = linear_errors(model, q, calib)
    e_rtn = linear_errors(model, rtn_model(model, bits), calib)
    e_absmax = linear_errors(model, quantized_copy(model, "absmax", w_bits=bits)[0], calib)
    assert sum(e_gptq.values()) < ratio * sum(e_rtn.values()) <= ratio * sum(e_absmax.values())
    assert sum(e_gptq[n] <= e_rtn[n] for n in e_gptq) >= 13  # nearly every single linear, too


def test_gptq_error_falls_with_bits(model, calib):
    errs = [sum(linear_errors(model, quantized_copy(model, "gptq", calib, w_bits=b)[0], calib).values())
            for b in [1.58, 2, 3, 4, 8]]
    assert errs == sorted(errs, reverse=True) and errs[-1] < 1e-3, errs


def test_true_sequential_and_activation_bits(model, calib):
    q, rep = quantized_copy(model, "gptq", calib, w_bits=4, true_sequential=True, a_bits=8)
    assert rep.n_linears == 14 and sum(len(m._forward_pre_hooks) for m in quantizable_linears(q).values()) == 14


@pytest.mark.parametrize("kw, field", [
    ({"w_bits": 5}, "w_bits"), ({"w_bits": 1}, "w_bits"), ({"group_size": 0}, "group_size"),
    ({"damp": -0.1}, "damp"), ({"block_size": 0}, "block_size"), ({"a_bits": 1}, "a_bits"),
    ({"w_bits": 1.58, "sym": False}, "sym"),
])
def test_bad_config(kw, field):
    with pytest.raises(ValueError, match=field):
        GPTQConfig(**kw)


@pytest.mark.parametrize(("family", "true_sequential", "solves"), [
    ("llama", False, 5), ("llama", True, 5),  # per block: q/k/v stacked, o, gate, up, down
    ("cohere", False, 5),  # parallel block: q/k/v/gate/up read one input; q/k/v stacked, gate and up alone
    ("gpt2", False, 4),  # Conv1D, fused c_attn: nothing shares, every linear stands alone
])
def test_linears_sharing_a_hessian_are_solved_stacked_bit_for_bit(family, true_sequential, solves):
    """GPTQ solves the linears that read one input as one matrix (apply.solve_stacked) when the stack is no
    larger than the block's largest linear; every weight, scale and zero equals its own, one-linear-at-a-time
    solve exactly, the stacked walk really ran, and no solve was larger than the largest linear."""
    from tiny_families import tiny_model

    from ptq_bench.quant.apply import hessian_stat, quantize_model
    from ptq_bench.quant.gptq import gptq_solver
    from ptq_bench.quant.linears import GRID_ATTR, weight_matrix

    base = tiny_model(family)
    sizes: dict[bool, list[int]] = {True: [], False: []}
    cfg = GPTQConfig(w_bits=3, group_size=32, true_sequential=true_sequential)

    def recorded(stack: bool):
        solve = gptq_solver(cfg)

        def run(linear, stat):
            sizes[stack].append(weight_matrix(linear).numel())
            return solve(linear, stat)
        return run

    out = {}
    for stack in (True, False):
        out[stack] = copy.deepcopy(base)
        quantize_model(out[stack], recorded(stack), cfg.a_bits, calib=calib_tokens(8, 32), make_stat=hessian_stat,
                       true_sequential=true_sequential, stack_shared=stack)
    assert len(sizes[True]) == solves * len(decoder_layers(base)) and len(sizes[False]) == len(quantizable_linears(base))
    assert max(sizes[True]) == max(sizes[False])  # the peak solve is a single linear's
    one, alone = quantizable_linears(out[True]), quantizable_linears(out[False])
    for name in alone:
        assert torch.equal(one[name].weight, alone[name].weight), name
        g1, g2 = getattr(one[name], GRID_ATTR), getattr(alone[name], GRID_ATTR)
        assert torch.equal(g1.scale, g2.scale) and torch.equal(g1.zero, g2.zero), name
        assert one[name].weight.untyped_storage().nbytes() == one[name].weight.numel() * 4, name  # own storage


def test_capture_refuses_a_forward_that_splits_rows():
    """xLSTM runs rows longer than max_inference_chunksize chunk by chunk through all blocks; block 0 would
    be recorded with the first chunk only, so calibration would silently use a fraction of its tokens."""
    from tiny_families import tiny_model

    from ptq_bench.errors import QuantError

    model = tiny_model("xlstm", vocab_size=64)
    model.config.max_inference_chunksize = 8
    ids = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))
    with pytest.raises(QuantError, match=r"block 0 received hidden states of shape \(2, 8, 64\) for a "
                                         r"calibration batch of \(2, 16\) tokens"):
        capture_inputs(model, ids)
    model.config.max_inference_chunksize = 16
    assert capture_inputs(model, ids).hidden[0].shape == (2, 16, 64)


def test_capture_reads_batch_and_tokens_after_the_families_stream_axes(monkeypatch):
    """Gemma 3n's blocks pass AltUp's streams in front, (streams, batch, tokens, hidden): its entry's `stream_axes`
    puts the whole-row check on the axes after them. Without it the check refuses every Gemma 3n batch; with it, a
    block 0 that saw fewer tokens than the batch holds is refused all the same."""
    from dataclasses import replace

    from tiny_families import tiny_model

    import ptq_bench.quant.calibrate as calibrate
    from ptq_bench.errors import QuantError

    model = tiny_model("gemma3n_text", vocab_size=64)
    ids = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))
    assert capture_inputs(model, ids).hidden[0].shape == (4, 2, 16, 64)
    with pytest.raises(QuantError, match=r"hidden states of shape \(4, 2, 8, 64\) for a calibration batch of \(2, 16\)"):
        calibrate._check_whole(model, torch.zeros(4, 2, 8, 64), ids)
    family = calibrate.model_family(model)
    monkeypatch.setattr(calibrate, "model_family", lambda m: replace(family, stream_axes=0))
    with pytest.raises(QuantError, match=r"hidden states of shape \(4, 2, 16, 64\)"):
        capture_inputs(model, ids)


@pytest.mark.parametrize("static_groups", [False, True])
def test_act_order_groups_count_the_stored_group_index(static_groups):
    """act_order with groups fitted in processing order (not static) stores which group each column is in
    (GPTQ's g_idx): ceil(log2 n_groups) bits per column count in the stored bits. Static groups are in
    column order, as without act_order: nothing more is stored."""
    W, H = correlated_problem(rows=24, cols=48)
    _, plain, _ = gptq_solve(W, H, 3, group_size=16)
    _, ordered, _ = gptq_solve(W, H, 3, group_size=16, act_order=True, static_groups=static_groups)
    index_bits = 0 if static_groups else 48 * 2  # 3 groups: 2 bits for each of the 48 columns
    assert ordered.storage_bits(W.numel()) == plain.storage_bits(W.numel()) + index_bits


def test_a_hessian_that_damping_leaves_singular_is_one_line():
    """damp 0 is allowed (bounds min 0.0) and works on a full-rank Hessian; with fewer calibration tokens than
    input columns H is singular and the Cholesky factor fails: a QuantError naming damp and the calibration
    size (exit 2), not LAPACK's traceback."""
    from ptq_bench.errors import QuantError
    from ptq_bench.quant.registry import get_method

    method = get_method("gptq")
    with pytest.raises(QuantError, match="damp 0.0.*calibration"):
        method.apply(tiny_llama(), method.make_config({"w_bits": 4, "damp": 0.0}), calib_tokens(1, 2))


@pytest.mark.parametrize("name", ["gptq", "quip"])
def test_non_finite_calibration_inputs_are_named_not_blamed_on_damp(name):
    """A model that diverged in training (NaN weights, a row like any other) reached GPTQ and QuIP, whose message
    said to raise damp or calibrate on more tokens: neither helps. The Hessian is checked for NaN / inf first."""
    from ptq_bench.errors import QuantError
    from ptq_bench.quant.registry import get_method

    model = tiny_llama()
    with torch.no_grad():
        model.model.embed_tokens.weight.fill_(float("nan"))
    method = get_method(name)
    with pytest.raises(QuantError, match="holds NaN or inf: its calibration inputs are not finite"):
        method.apply(model, method.make_config({"w_bits": 4 if name == "gptq" else 2}), calib_tokens(4, 16))


def test_gptq_rounds_w_over_scale_then_adds_the_zero_point_as_quant_py():
    """The reference's quant.py: clamp(round(w / scale) + zero, 0, maxq). round(w / scale + zero) first rounds
    w / scale to float32's spacing at zero's size (2^-20 at zero 8): 1.5 - 2^-23 + 8 is 9.5, a tie, rounded to
    10, one level above the reference's 9. Found where GPTQModel (which rounds as quant.py) and ours, fed
    bit-equal Hessians, parted on SmolLM2 (benchmarks/README.md); a 1 x 2 weight with H = I shows it, since
    column 0 (max |w| 7.5, so scale 1 at 4 bits) feeds nothing back to column 1."""
    w = torch.tensor([[-7.5, 1.5 - 2.0**-23]])
    assert float(torch.tensor(1.5 - 2.0**-23) + 8) == 9.5  # the old sum: a tie in float32
    q, grid, _ = gptq_solve(w, torch.eye(2), 4, group_size=-1)
    assert float(grid.scale.flatten()[0]) == 1.0 and q.tolist() == [[-8.0, 1.0]]
    # an odd zero point (ternary: zero 1): the tie 0.5 rounds to 0 first (even), then 1 is added
    one = torch.ones(1)
    assert quantize_int_zero(torch.tensor([0.5]), one, one, 2).tolist() == [0.0]
