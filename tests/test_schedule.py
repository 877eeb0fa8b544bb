"""TAIDSchedule trajectories against a direct transcription of the paper's equations."""

import math
import pickle

import pytest

from taid_vlm.losses import TAIDSchedule


def reference_trajectory(losses, total, t_start=0.4, t_end=1.0, alpha=5e-4, beta=0.99, adaptive=True):
    """docs/TAID.md, line by line, written independently of the implementation."""
    t, m, prev, out = t_start, 0.0, None, []
    for n, loss in enumerate(losses, start=1):
        t_lin = t_start + (t_end - t_start) * min(n, total) / total
        candidate = t
        if adaptive and prev is not None:
            delta = (prev - loss) / (prev + 1e-15)
            m = beta * m + (1 - beta) * delta
            candidate = t + alpha * (1 / (1 + math.exp(-m))) * (1 - t)
        prev = loss
        t = min(t_end, max(t_lin, candidate, t))
        out.append(t)
    return out


def run(schedule, losses):
    return [schedule.step(x) for x in losses]


def decaying(n, rate=0.002):
    return [5.0 * math.exp(-rate * i) + 0.1 for i in range(n)]


def test_linear_ablation_is_exactly_linear():
    s = TAIDSchedule(total_steps=50, t_start=0.2, adaptive=False)
    ts = run(s, decaying(60))
    for n, t in enumerate(ts, start=1):
        assert t == pytest.approx(min(1.0, 0.2 + 0.8 * n / 50))
    assert ts[49] == 1.0 and ts[-1] == 1.0  # reaches t_end at N and stays capped


def test_short_run_adaptive_equals_linear_when_alpha_n_small():
    # alpha * N / 2 = 0.05 << 1: the linear floor dominates every step (docs/TAID.md, item 4 of the differences)
    s = TAIDSchedule(total_steps=200)
    ts = run(s, decaying(200))
    assert ts == pytest.approx([0.4 + 0.6 * n / 200 for n in range(1, 201)])


def test_long_run_adaptive_departs_from_linear_and_matches_reference():
    total = 10_000  # alpha * N / 2 = 2.5 > 1: the adaptive term wins
    losses = decaying(total)
    s = TAIDSchedule(total_steps=total)
    ts = run(s, losses)
    assert ts == pytest.approx(reference_trajectory(losses, total), rel=1e-12)
    mid_linear = 0.4 + 0.6 * 0.5
    assert ts[total // 2 - 1] > mid_linear + 0.1
    assert all(b >= a for a, b in zip(ts, ts[1:]))  # monotone
    assert all(t >= 0.4 + 0.6 * n / total - 1e-12 for n, t in enumerate(ts, start=1))  # never below linear
    assert max(ts) <= 1.0


def test_first_step_only_stores_loss():
    s = TAIDSchedule(total_steps=10_000)
    s.step(3.0)
    assert s.momentum == 0.0 and s.prev_loss == 3.0
    assert s.t == pytest.approx(s.t_linear)


def test_rising_loss_slows_but_never_reverses():
    losses = [1.0 + 0.01 * i for i in range(3000)]
    s = TAIDSchedule(total_steps=3000, alpha=0.01)
    ts = run(s, losses)
    assert s.momentum < 0
    assert all(b >= a for a, b in zip(ts, ts[1:]))
    assert ts == pytest.approx(reference_trajectory(losses, 3000, alpha=0.01))


def test_alpha_per_run_scales_with_length():
    s = TAIDSchedule(total_steps=400, alpha_per_run=20.0)
    assert s.alpha == pytest.approx(0.05)
    ts = run(s, decaying(400, rate=0.01))
    assert ts[99] > 0.4 + 0.6 * 100 / 400 + 0.1  # a short run that really adapts


def test_state_dict_resume_is_exact_and_picklable():
    losses = decaying(6000)
    full = TAIDSchedule(total_steps=6000)
    expected = run(full, losses)
    first = TAIDSchedule(total_steps=6000)
    run(first, losses[:2500])
    resumed = TAIDSchedule(total_steps=6000)
    resumed.load_state_dict(pickle.loads(pickle.dumps(first.state_dict())))
    assert run(resumed, losses[2500:]) == expected[2500:]
    assert pickle.loads(pickle.dumps(resumed)).t == resumed.t


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="total_steps"):
        TAIDSchedule(total_steps=0)
    with pytest.raises(ValueError, match="t_start"):
        TAIDSchedule(total_steps=10, t_start=0.9, t_end=0.5)
    with pytest.raises(ValueError, match="finite"):
        TAIDSchedule(total_steps=10).step(float("nan"))
    with pytest.raises(KeyError, match="missing"):
        TAIDSchedule(total_steps=10).load_state_dict({"t": 0.5})
