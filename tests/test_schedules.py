"""LR schedules: exact values of the documented closed forms at the edges of every phase, and the errors."""

from __future__ import annotations

import math

import pytest

from warmstart.config import ScheduleConfig
from warmstart.errors import UserError
from warmstart.train.schedules import lr_at, min_lr, schedule_values, warmup_steps

KINDS = ["constant", "cosine", "wsd", "infinite"]
SHAPES = {
    "linear": lambda q: 1 - q,
    "cosine": lambda q: 0.5 * (1 + math.cos(math.pi * q)),
    "1-sqrt": lambda q: 1 - math.sqrt(q),
}


def cfg(**kw) -> ScheduleConfig:
    return ScheduleConfig(**kw)


def approx(x: float):
    return pytest.approx(x, rel=1e-12, abs=1e-15)


def _non_increasing(xs: list[float]) -> bool:
    return all(b <= a for a, b in zip(xs, xs[1:], strict=False))


# ----------------------------------------------------------------------------------------------- basics
def test_warmup_steps_given_fraction_or_none():
    assert warmup_steps(cfg(warmup_steps=7), 100) == 7
    assert warmup_steps(cfg(warmup_steps=100), 100) == 100
    assert warmup_steps(cfg(warmup_fraction=0.05), 1000) == 50
    assert warmup_steps(cfg(warmup_fraction=0.05), 50) == 2  # round(2.5): Python rounds half to even
    assert warmup_steps(cfg(warmup_fraction=1.0), 9) == 9
    assert warmup_steps(cfg(), 100) == 0
    with pytest.raises(UserError, match=r"^schedule\.warmup_steps: 101 warmup steps exceed the run's 100"):
        warmup_steps(cfg(warmup_steps=101), 100)


def test_min_lr_absolute_overrides_ratio():
    assert min_lr(cfg(max_lr=2e-3)) == 0.1 * 2e-3
    assert min_lr(cfg(max_lr=2e-3, min_lr_ratio=0.0)) == 0.0
    assert min_lr(cfg(max_lr=2e-3, min_lr_ratio=0.5, min_lr=1e-5)) == 1e-5
    assert min_lr(cfg(max_lr=2e-3, min_lr=2e-3)) == 2e-3
    with pytest.raises(UserError, match=r"^schedule\.min_lr: 0\.003 is above schedule\.max_lr 0\.002"):
        min_lr(cfg(max_lr=2e-3, min_lr=3e-3))


@pytest.mark.parametrize("kind", KINDS)
def test_warmup_is_linear_from_one_step_in(kind):
    c = cfg(kind=kind, max_lr=1.0, warmup_steps=4)
    assert [lr_at(c, s, 100) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]  # exact in binary
    c = cfg(kind=kind, max_lr=3e-4, warmup_steps=3)
    assert [lr_at(c, s, 100) for s in range(3)] == [3e-4 * 1 / 3, 3e-4 * 2 / 3, 3e-4]
    assert lr_at(c, 0, 100) > 0


@pytest.mark.parametrize("kind", KINDS)
def test_warmup_as_long_as_the_run(kind):
    """W = T: every step is warmup and the last one is at max_lr (decay phases of length 0 then fit)."""
    c = cfg(kind=kind, max_lr=1e-3, warmup_steps=5, decay_fraction=0.0, cooldown_fraction=0.0)
    assert schedule_values(c, 5) == [1e-3 * (s + 1) / 5 for s in range(5)]
    assert schedule_values(c, 5)[-1] == 1e-3


@pytest.mark.parametrize("kind", KINDS)
def test_one_step_run(kind):
    c = cfg(kind=kind, max_lr=1e-3)  # round(0.2 * 1) = 0 decay steps, round(0.1 * 1) = 0 cooldown steps
    # infinite: no cooldown steps, so the one step is already in the constant phase
    assert schedule_values(c, 1) == [0.25 * 1e-3 if kind == "infinite" else 1e-3]
    assert schedule_values(cfg(kind=kind, max_lr=1e-3, warmup_steps=1), 1) == [1e-3]


# ----------------------------------------------------------------------------------------------- kinds
def test_constant():
    assert schedule_values(cfg(kind="constant", max_lr=2e-4), 6) == [2e-4] * 6
    assert schedule_values(cfg(kind="constant", max_lr=2e-4, warmup_steps=2), 5) == [
        1e-4,
        2e-4,
        2e-4,
        2e-4,
        2e-4,
    ]


def test_cosine_closed_form():
    mx, mn, t, w = 1e-3, 1e-4, 10, 2
    c = cfg(kind="cosine", max_lr=mx, min_lr=mn, warmup_steps=w)
    vals = schedule_values(c, t)

    def expected(s):
        return mn + (mx - mn) * 0.5 * (1 + math.cos(math.pi * (s - w) / (t - w)))

    assert vals[:2] == [mx / 2, mx]
    assert vals[2] == approx(mx)  # first post-warmup step: p = 0
    assert vals[6] == approx(mn + (mx - mn) * 0.5)  # p = 1/2
    assert vals[9] == approx(
        mn + (mx - mn) * 0.5 * (1 + math.cos(math.pi * 7 / 8))
    )  # last: p = 7/8, above min
    assert vals == [approx(mx * (s + 1) / w) if s < w else approx(expected(s)) for s in range(t)]
    post = vals[w:]
    assert all(b < a for a, b in zip(post, post[1:], strict=False)) and min(post) > mn


def test_cosine_without_warmup_and_min_lr_ratio():
    c = cfg(kind="cosine", max_lr=2.0, min_lr_ratio=0.25)  # min = 0.5
    vals = schedule_values(c, 4)
    assert vals[0] == 2.0
    assert vals[2] == approx(0.5 + 1.5 * 0.5)
    assert vals[3] == approx(0.5 + 1.5 * 0.5 * (1 + math.cos(math.pi * 3 / 4)))
    assert schedule_values(cfg(kind="cosine", max_lr=2.0, min_lr_ratio=1.0), 5) == [2.0] * 5


@pytest.mark.parametrize("shape", list(SHAPES))
def test_wsd_closed_form(shape):
    mx, t, w = 1e-3, 20, 2
    mn = 0.1 * mx
    c = cfg(kind="wsd", max_lr=mx, warmup_steps=w, decay_fraction=0.25, decay_shape=shape)  # D = 5
    vals = schedule_values(c, t)
    f = SHAPES[shape]
    assert vals[:2] == [mx / 2, mx]
    assert vals[2:15] == [mx] * 13  # stable from W to T - D
    for s in range(15, 20):
        assert vals[s] == approx(mn + (mx - mn) * f((s - 15 + 1) / 5)), s
    assert vals[15] < mx and vals[19] == mn  # last step exactly min_lr
    assert _non_increasing(vals[w:])


@pytest.mark.parametrize("shape", list(SHAPES))
def test_wsd_whole_run_decay_and_no_decay(shape):
    f = SHAPES[shape]
    c = cfg(kind="wsd", max_lr=1.0, min_lr=0.0, decay_fraction=1.0, decay_shape=shape)  # D = T = 4, no warmup
    assert schedule_values(c, 4) == [approx(f(q)) for q in (0.25, 0.5, 0.75, 1.0)]
    assert schedule_values(c, 4)[-1] == 0.0
    assert schedule_values(c, 1) == [0.0]  # a 1-step run that is all cooldown ends at min
    c = cfg(kind="wsd", max_lr=1.0, warmup_steps=1, decay_fraction=0.0, decay_shape=shape)
    assert schedule_values(c, 4) == [1.0] * 4


def test_decay_shapes_differ_in_the_expected_order():
    """At mid-cooldown: 1-sqrt has dropped most, then linear, then cosine."""
    vals = {
        shape: lr_at(cfg(kind="wsd", max_lr=1.0, min_lr=0.0, decay_fraction=1.0, decay_shape=shape), 49, 100)
        for shape in SHAPES
    }
    assert vals["1-sqrt"] == approx(1 - math.sqrt(0.5))
    assert vals["linear"] == 0.5
    assert vals["cosine"] == approx(0.5 * (1 + math.cos(math.pi / 2)))
    assert vals["1-sqrt"] < vals["linear"] <= vals["cosine"] + 1e-15


@pytest.mark.parametrize("shape", list(SHAPES))
def test_infinite_closed_form(shape):
    mx, t, w = 1e-3, 100, 10
    mn, const = 0.1 * mx, 0.25 * mx
    c = cfg(
        kind="infinite",
        max_lr=mx,
        warmup_steps=w,
        cooldown_fraction=0.2,  # C = 20: steps 10..29
        decay_fraction=0.1,  # A = 10: steps 90..99
        constant_lr_ratio=0.25,
        decay_shape=shape,
    )
    vals = schedule_values(c, t)
    f = SHAPES[shape]
    assert vals[:w] == [mx * (s + 1) / w for s in range(w)]
    assert vals[9] == mx and vals[10] == approx(mx)  # warmup end, first cooldown step (p = 0)
    assert vals[20] == approx(const + (mx - const) * 0.5)  # p = 1/2
    assert vals[29] == approx(const + (mx - const) * 0.5 * (1 + math.cos(math.pi * 19 / 20)))
    for s in range(10, 30):
        assert vals[s] == approx(const + (mx - const) * 0.5 * (1 + math.cos(math.pi * (s - 10) / 20))), s
    assert vals[30:90] == [const] * 60  # constant phase
    for s in range(90, 100):
        assert vals[s] == approx(mn + (const - mn) * f((s - 90 + 1) / 10)), s
    assert vals[90] < const and vals[99] == mn
    assert _non_increasing(vals[w:])


def test_infinite_without_warmup_cooldown_or_anneal():
    c = cfg(kind="infinite", max_lr=1.0, min_lr=0.0, cooldown_fraction=0.0, decay_fraction=0.0)
    assert schedule_values(c, 5) == [0.25] * 5  # straight to the constant phase
    c = cfg(
        kind="infinite",
        max_lr=1.0,
        min_lr=0.0,
        cooldown_fraction=0.5,
        decay_fraction=0.5,
        decay_shape="linear",
    )
    assert schedule_values(c, 4) == [approx(1.0), approx(0.625), approx(0.125), 0.0]


# ----------------------------------------------------------------------------------------------- errors
def test_inconsistent_inputs_name_the_key():
    with pytest.raises(UserError, match=r"^schedule\.warmup_steps: "):
        lr_at(cfg(warmup_steps=11), 0, 10)
    with pytest.raises(UserError, match=r"^schedule\.min_lr: "):
        lr_at(cfg(max_lr=1e-4, min_lr=1e-3), 0, 10)
    with pytest.raises(
        UserError, match=r"^schedule\.decay_fraction: 5 warmup \+ 6 cooldown steps exceed the run's 10"
    ):
        lr_at(cfg(kind="wsd", warmup_steps=5, decay_fraction=0.6), 0, 10)
    with pytest.raises(
        UserError, match=r"^schedule\.cooldown_fraction: 2 warmup \+ 5 cooldown \+ 4 anneal steps"
    ):
        lr_at(cfg(kind="infinite", warmup_steps=2, cooldown_fraction=0.5, decay_fraction=0.4), 0, 10)
    with pytest.raises(UserError, match=r"^schedule\.constant_lr_ratio: "):
        lr_at(cfg(kind="infinite", constant_lr_ratio=0.05, min_lr_ratio=0.1), 0, 10)
    with pytest.raises(UserError, match=r"^schedule: the run has 0 optimizer steps"):
        schedule_values(cfg(), 0)
    for bad in (-1, 10):
        with pytest.raises(ValueError, match="outside the run"):
            lr_at(cfg(), bad, 10)
    # the phases fit exactly: no error
    assert lr_at(cfg(kind="wsd", warmup_steps=4, decay_fraction=0.6), 9, 10) == approx(min_lr(cfg()))
    assert (
        len(
            schedule_values(
                cfg(kind="infinite", warmup_steps=1, cooldown_fraction=0.5, decay_fraction=0.4), 10
            )
        )
        == 10
    )


def test_errors_are_one_line():
    with pytest.raises(UserError) as e:
        lr_at(cfg(kind="infinite", warmup_steps=2, cooldown_fraction=0.5, decay_fraction=0.4), 0, 10)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("kind", KINDS)
def test_bounded_by_min_and_max(kind):
    c = cfg(kind=kind, max_lr=3e-4, warmup_fraction=0.1, decay_fraction=0.3, cooldown_fraction=0.2)
    vals = schedule_values(c, 97)
    assert len(vals) == 97 and vals == [lr_at(c, s, 97) for s in range(97)]
    w = warmup_steps(c, 97)
    assert all(b > a for a, b in zip(vals[:w], vals[1:w], strict=False))
    assert all(min_lr(c) - 1e-18 <= v <= 3e-4 for v in vals[w:])
    assert _non_increasing(vals[w:])
