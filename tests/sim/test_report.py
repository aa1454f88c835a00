import pytest

from sim.report import markdown_table, mcnemar, paired_difference_ci, summarize, wilson


def test_wilson_known_values():
    lo, hi = wilson(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-3)
    assert hi == pytest.approx(0.9433, abs=1e-3)
    lo, hi = wilson(0, 50)
    assert lo == 0.0 and hi == pytest.approx(0.0713, abs=1e-3)
    lo, hi = wilson(50, 50)
    assert hi == pytest.approx(1.0) and lo == pytest.approx(0.9287, abs=1e-3)
    assert wilson(0, 0) == (0.0, 1.0)


def test_mcnemar_exact():
    # 10 discordant pairs all favouring b: two-sided exact p = 2 / 2**10
    a = [False] * 10 + [True] * 5
    b = [True] * 10 + [True] * 5
    r = mcnemar(a, b)
    assert (r["a_only"], r["b_only"]) == (0, 10)
    assert r["p_value"] == pytest.approx(2 / 1024)
    # balanced discordance: no evidence
    r = mcnemar([True, False] * 5, [False, True] * 5)
    assert r["p_value"] == 1.0
    assert mcnemar([True], [True])["p_value"] == 1.0
    with pytest.raises(ValueError):
        mcnemar([True], [True, False])


def test_paired_difference_interval_covers_the_true_difference():
    import random

    # joint outcomes like the VLA comparison's: VST alone succeeds 15%, baseline alone 3%, both 5%
    rng, n, truth, hits = random.Random(0), 100, 0.15 - 0.03, 0
    for _ in range(1000):
        u = [rng.random() for _ in range(n)]
        a = [x < 0.05 + 0.15 for x in u]  # both or a only
        b = [x < 0.05 or 0.20 <= x < 0.23 for x in u]  # both or b only
        lo, hi = paired_difference_ci(a, b)
        assert -1.0 <= lo <= (sum(a) - sum(b)) / n <= hi <= 1.0
        hits += lo <= truth <= hi
    assert 0.93 <= hits / 1000 <= 0.99  # a 95% interval (Newcombe's errs slightly wide)


def test_paired_difference_interval_properties():
    a = [True] * 16 + [False] * 84
    b = [True] * 4 + [False] * 96
    lo, hi = paired_difference_ci(a, b)
    assert 0.0 < lo < 0.12 < hi < 0.25  # 16 vs 4 of 100 with every b success shared: clearly positive
    assert paired_difference_ci(b, a) == pytest.approx((-hi, -lo))  # swapping the policies negates it
    lo, hi = paired_difference_ci([True, False] * 10, [True, False] * 10)
    assert lo <= 0.0 <= hi and hi - lo < 0.3  # identical outcomes: centred on 0
    assert paired_difference_ci([True] * 5, [False] * 5)[1] == 1.0  # clipped at the range's end
    with pytest.raises(ValueError, match="equal length"):
        paired_difference_ci([True], [True, False])


def test_summarize():
    eps = [
        {"task": "a", "success": True, "steps": 10, "failure_reason": None},
        {"task": "a", "success": False, "steps": 20, "failure_reason": "target_not_lifted"},
        {"task": "b", "success": False, "steps": 30, "failure_reason": "target_not_lifted"},
    ]
    s = summarize(eps)
    assert s["overall"]["successes"] == 1 and s["overall"]["episodes"] == 3
    assert s["tasks"]["a"]["success_rate"] == 0.5
    assert s["tasks"]["b"]["failure_reasons"] == {"target_not_lifted": 1}
    assert s["tasks"]["a"]["mean_steps"] == 15
    assert s["overall"]["picking"] is None  # older episodes carry no "picked"


def test_picking_rates_and_choice_accuracy():
    eps = [
        {"task": "a", "success": True, "steps": 10, "failure_reason": None, "picked": "target"},
        {"task": "a", "success": False, "steps": 20, "failure_reason": "x", "picked": "wrong"},
        {"task": "a", "success": False, "steps": 20, "failure_reason": "x", "picked": "target"},
        {"task": "a", "success": False, "steps": 20, "failure_reason": "x", "picked": "none"},
        {"task": "b", "success": False, "steps": 30, "failure_reason": "x", "picked": "none"},
    ]
    s = summarize(eps)
    a = s["tasks"]["a"]["picking"]
    assert a["picked_target_rate"] == 0.5 and a["picked_wrong_rate"] == 0.25
    assert a["choice_accuracy"] == pytest.approx(2 / 3)
    assert s["tasks"]["b"]["picking"]["choice_accuracy"] is None
    assert s["overall"]["picking"]["picked_target_rate"] == pytest.approx(2 / 5)
    assert a["picked_lookalike_rate"] is None  # episodes recorded before the field
    md = markdown_table(s, "t")
    assert "50% / 25% / 67%" in md and "0% / 0% / -" in md


def test_lookalike_choice_accuracy():
    eps = [
        {
            "task": "a",
            "success": False,
            "steps": 9,
            "failure_reason": "x",
            "picked": p,
            "picked_lookalike": look,
        }
        for p, look in [
            ("target", False),
            ("wrong", True),
            ("wrong", False),
            ("target", False),
            ("none", False),
        ]
    ]
    pk = summarize(eps)["tasks"]["a"]["picking"]
    assert pk["picked_lookalike_rate"] == pytest.approx(1 / 5) and pk["picked_wrong_rate"] == pytest.approx(
        2 / 5
    )
    assert pk["lookalike_choice_accuracy"] == pytest.approx(2 / 3) and pk["choice_accuracy"] == pytest.approx(
        1 / 2
    )
    assert "40% / 40% (20% look-alike) / 50%" in markdown_table(summarize(eps), "t")
