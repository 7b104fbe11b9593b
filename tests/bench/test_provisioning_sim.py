"""The provisioning simulator (bench.provisioning_sim): a job alone finishes when its
known curve says it does, every job of a trace finishes under every scheduler, and no
scheduler uses more slots than there are (simulate asserts it at each decision)."""

import argparse

import pytest

from bench import provisioning_sim as sim


def options(**overrides):
    values = dict(nodes=2, slots_per_node=4, interval=60.0, restart_s=15.0)
    return argparse.Namespace(**{**values, **overrides})


def test_a_job_alone_under_fixed_allocation_finishes_when_its_curve_says():
    step, gns0 = sim.CLASSES[1][2], sim.CLASSES[1][3]
    job = sim.SimJob(0, "middling", 0.0, step, gns0, 1.0, work=1e6, asked=2)
    result = sim.simulate("fixed", [job], options())
    rate = float(job.model().goodput(job.user_batch, 2, 1))  # φ does not grow (growth 1)
    assert result["avg_jct_s"] == pytest.approx(1e6 / rate, rel=1e-9)
    assert result["moves_per_job"] == 0


@pytest.mark.parametrize("scheduler", sim.SCHEDULERS)
def test_every_job_of_a_trace_finishes_under_every_scheduler(scheduler):
    trace = sim.make_trace(3, 8, 300.0, 0.3)
    result = sim.simulate(scheduler, trace, options())
    assert result["makespan_s"] >= max(j.arrival for j in trace)
    assert result["p99_jct_s"] >= result["avg_jct_s"] > 0


def test_goodput_allocation_beats_fixed_on_a_trace_of_mixed_scalability():
    trace = sim.make_trace(0, 16, 240.0, 0.5)
    fixed = sim.simulate("fixed", trace, options())
    goodput = sim.simulate("goodput", trace, options())
    assert goodput["avg_jct_s"] < fixed["avg_jct_s"]
