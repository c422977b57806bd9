"""``distsched epsilon`` and ``distsched plan``: values against Opacus, JSON keys, one-line errors with exit 2."""

from __future__ import annotations

import json

import pytest
from opacus.accountants import PRVAccountant, RDPAccountant

from distsched.cli import main


def _run(capsys, *argv):
    try:
        rc = main(list(argv))
    except SystemExit as exc:  # argparse errors
        rc = exc.code
    out, err = capsys.readouterr()
    return rc, out, err


def _opacus_eps(sigma, q, steps, delta, mech="rdp"):
    acc = RDPAccountant() if mech == "rdp" else PRVAccountant()
    acc.history = [(sigma, q, steps)]
    return acc.get_epsilon(delta=delta)


def test_epsilon_json_matches_opacus(capsys):
    rc, out, _ = _run(capsys, "epsilon", "--sigma", "1.5", "--sample-rate", "0.04", "--steps", "2250",
                      "--delta", "1e-5", "--json")
    assert rc == 0
    res = json.loads(out)
    assert res["epsilon"] == pytest.approx(7.32911117143, abs=1e-7)  # Opacus' own test value
    assert {"noise_multiplier", "epsilon", "delta", "steps", "sample_rate", "accountant"} <= set(res)


def test_epsilon_table_prv(capsys):
    rc, out, _ = _run(capsys, "epsilon", "--sigma", "1.2", "--sample-rate", "0.02", "--steps", "200",
                      "--delta", "1e-5", "--accountant", "prv")
    assert rc == 0
    line = [ln for ln in out.splitlines() if ln.startswith("epsilon")][0]
    assert float(line.split()[-1]) == pytest.approx(_opacus_eps(1.2, 0.02, 200, 1e-5, "prv"), abs=1e-6)


def test_plan_json_and_plot(capsys, tmp_path):
    png = tmp_path / "plan.png"
    rc, out, _ = _run(capsys, "plan", "--target-epsilon", "4", "--delta", "1e-5", "--batch-size", "64",
                      "--dataset-size", "6400", "--epochs", "10", "--json", "--plot", str(png))
    assert rc == 0
    res = json.loads(out)
    assert {"noise_multiplier", "epsilon", "delta", "steps", "sample_rate", "accountant"} <= set(res)
    assert res["steps"] == 1000 and res["sample_rate"] == 0.01
    eps = _opacus_eps(res["noise_multiplier"], 0.01, 1000, 1e-5)
    assert 4 - 1e-3 <= eps <= 4
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plan_solve_steps_and_schedule_table(capsys):
    rc, out, _ = _run(capsys, "plan", "--target-epsilon", "3", "--delta", "1e-5", "--sample-rate", "0.02",
                      "--noise-multiplier", "1.0", "--solve", "steps", "--json")
    assert rc == 0
    n = json.loads(out)["steps"]
    assert _opacus_eps(1.0, 0.02, n, 1e-5) <= 3 < _opacus_eps(1.0, 0.02, n + 1, 1e-5)
    rc, out, _ = _run(capsys, "plan", "--target-epsilon", "3", "--delta", "1e-5", "--sample-rate", "0.02",
                      "--steps", "300", "--noise-schedule", "step:gamma=0.8,step_size=100")
    assert rc == 0 and "StepNoise" in out and "noise multiplier" in out


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["epsilon", "--sigma", "1", "--sample-rate", "0.1", "--steps", "10", "--delta", "1.5"], "delta"),
        (["epsilon", "--sigma", "1", "--sample-rate", "0.1", "--steps", "10", "--delta", "0"], "delta"),
        (["epsilon", "--sigma", "1", "--sample-rate", "1.5", "--steps", "10", "--delta", "1e-5"], "sample_rate"),
        (["epsilon", "--sigma", "1", "--sample-rate", "0", "--steps", "10", "--delta", "1e-5"], "sample_rate"),
        (["epsilon", "--sigma", "-1", "--sample-rate", "0.1", "--steps", "10", "--delta", "1e-5"], "sigma"),
        (["plan", "--target-epsilon", "1", "--delta", "1e-5", "--sample-rate", "0.1", "--steps", "10",
          "--epochs", "1"], "steps"),
        (["plan", "--target-epsilon", "1", "--delta", "1e-5", "--sample-rate", "0.1"], "steps"),
        (["plan", "--target-epsilon", "1", "--delta", "2", "--sample-rate", "0.1", "--steps", "10"], "delta"),
        (["plan", "--target-epsilon", "1", "--delta", "1e-5", "--sample-rate", "0.1", "--steps", "10",
          "--noise-schedule", "bogus"], "noise_schedule"),
        (["plan", "--target-epsilon", "1e-4", "--delta", "1e-5", "--sample-rate", "0.5",
          "--noise-multiplier", "0.5"], "reachable"),
        (["epsilon", "--sigma", "1", "--sample-rate", "0.1", "--delta", "1e-5"], "--steps"),
    ],
)
def test_invalid_input_is_one_line_exit_2(capsys, argv, needle):
    rc, out, err = _run(capsys, *argv)
    assert rc == 2
    assert len(err.strip().splitlines()) == 1 and needle in err
    assert "Traceback" not in err



def test_plan_batch_scaling_rows(capsys):
    rc, out, _ = _run(capsys, "plan", "--target-epsilon", "3", "--delta", "1e-5", "--batch-size", "128",
                      "--dataset-size", "12800", "--steps", "500", "--batch-scaling", "0.5,1,2", "--json")
    assert rc == 0
    res = json.loads(out)
    rows = res["batch_scaling"]
    assert [r["batch_size"] for r in rows] == [64, 128, 256]
    for r in rows:
        assert r["noise_multiplier"] / r["batch_size"] == pytest.approx(res["noise_multiplier"] / 128, rel=1e-12)
        assert r["epsilon"] == pytest.approx(_opacus_eps(r["noise_multiplier"], r["batch_size"] / 12800, 500, 1e-5),
                                             rel=1e-12)
    assert rows[1]["epsilon"] == pytest.approx(res["epsilon"], rel=1e-12)  # k = 1 is the plan itself
    rc, _, err = _run(capsys, "plan", "--target-epsilon", "3", "--delta", "1e-5", "--sample-rate", "0.01",
                      "--steps", "500", "--batch-scaling", "2")
    assert rc == 2 and "--batch-scaling needs --batch-size" in err


@pytest.mark.parametrize(
    "argv",
    [
        ["epsilon", "--sigma", "1e-300", "--sample-rate", "0.5", "--delta", "1e-5", "--steps", "10"],
        ["epsilon", "--sigma", "1e200", "--sample-rate", "0.5", "--delta", "1e-5", "--steps", "10"],
        ["plan", "--delta", "1e-5", "--noise-multiplier", "1e-300", "--sample-rate", "0.5", "--steps", "10"],
        ["plan", "--delta", "1e-5", "--noise-multiplier", "1e300", "--sample-rate", "0.5", "--steps", "10"],
    ],
)
def test_extreme_noise_is_one_line_exit_2(argv, capsys):
    """Opacus' analysis under- or overflows far outside [1e-3, 1e4]: refused with the range, no traceback."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and ("[0.001, 10000" in err or "[0, 10000]" in err)


def test_noise_below_the_floor_is_accounted_as_no_noise():
    from distsched.privacy import Accountant, epsilon

    assert epsilon([(1e-200, 0.5, 10)], 1e-5) == float("inf")
    acc = Accountant("rdp")
    acc.step(1e-200, 0.5, steps=3)
    assert acc.epsilon(1e-5) == float("inf")
