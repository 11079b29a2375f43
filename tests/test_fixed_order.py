"""Results that must not depend on torch's CPU thread count (a Ray task runs `cpus_per_cell` threads, a
local run every core): BitNet's weight scale and training, the grids' whole-tensor means, and GPTQ's and
QuIP's inverse-Hessian factor (ptq_bench/fixed_order.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from ptq_bench.fixed_order import GRAIN, mean_in_fixed_order


@pytest.fixture
def threads():
    """Set torch's thread count inside a test; the count before it is restored after."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [1000, GRAIN, GRAIN + 1, 98_304, 1_000_003])
def test_weight_scale_mean_does_not_depend_on_the_thread_count(threads, n, dtype):
    """The whole-tensor mean behind s_w (and the per-tensor absmean grid's, QuIP's RMS) is the same on
    1, 2 and 3 threads, and equal to torch's own mean on 2 threads, the count every committed row was
    computed with."""
    w = torch.randn(n, generator=torch.Generator().manual_seed(n), dtype=dtype) * 0.02
    for view in (w, w[: n - n % 100].view(100, -1).T):  # a transposed weight is summed as stored, as torch does
        got = []
        for count in (1, 2, 3):
            threads(count)
            got.append(mean_in_fixed_order(view.abs()))
        threads(2)
        assert all(torch.equal(g, view.abs().mean()) for g in got)


@pytest.mark.parametrize("kind", ["bitnet_b158", "bitnet_b1"])
def test_bitnet_training_does_not_depend_on_the_thread_count(threads, kind):
    """A few training steps on 1 and on 2 threads give the same weights, bit for bit (a Ray worker runs
    1 thread, this machine's local run 2). With torch's mean, b1.58 parted after a few steps."""
    from ptq_bench.models.build import ArchConfig, build_model
    from ptq_bench.models.train import forward_loss, make_optimizer, make_schedule, update

    arch = ArchConfig(hidden_size=192, intermediate_size=512, num_layers=1, num_heads=4, max_seq_len=64)
    states = []
    for count in (1, 2):
        threads(count)
        model = build_model(kind, arch, 512, seed=0)
        opt = make_optimizer(model, make_schedule(kind))
        g = torch.Generator().manual_seed(1)
        for _ in range(12):
            update(model, opt, forward_loss(model, torch.randint(0, 512, (8, 33), generator=g)), 1.0)
        states.append(model.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


@pytest.mark.parametrize("method, params", [("gptq", {"w_bits": 3, "group_size": 64}), ("quip", {"w_bits": 2})])
def test_gptq_and_quip_do_not_depend_on_the_thread_count(threads, method, params):
    """The inverse-Hessian factor is taken on 2 LAPACK threads whatever torch's count (fixed_order.
    lapack_threads), so a model quantized on 1 and on 2 threads is the same, bit for bit; LAPACK's Cholesky
    splits its sums by thread, which moved the quickstart's GPTQ and QuIP rows between Ray and local."""
    import copy

    from ptq_bench.models.build import ArchConfig, build_model
    from ptq_bench.quant import METHODS, load_all

    load_all()
    arch = ArchConfig(hidden_size=192, intermediate_size=512, num_layers=1, num_heads=4, max_seq_len=64)
    model = build_model("fp16", arch, 512, seed=0).eval()
    calib = torch.randint(0, 512, (8, 64), generator=torch.Generator().manual_seed(2))
    states = []
    for count in (1, 2):
        threads(count)
        target, m = copy.deepcopy(model), METHODS[method]
        m.apply(target, m.config_cls(**params), calib)
        states.append(target.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


@pytest.mark.parametrize("threads, policy, want", [("1", None, "PASSIVE"), ("1", "ACTIVE", "ACTIVE"),
                                                   ("2", None, None), (None, None, None)])
def test_a_one_thread_process_waits_passively_in_the_lapack_threads(threads, policy, want):
    """One torch thread, 2 for the inverse-Hessian factor: OpenMP's spin-waiting stalled that 2-thread barrier on
    a busy core (up to 0.6 s a call). ptq_bench sets passive waiting before torch loads, unless the user chose."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    env.update({k: v for k, v in (("OMP_NUM_THREADS", threads), ("OMP_WAIT_POLICY", policy)) if v is not None})
    code = "import os, ptq_bench; print(os.environ.get('OMP_WAIT_POLICY'))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == str(want)
