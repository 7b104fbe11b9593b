"""Policies read the GPU series the agents write (gpu_util, gpu_mem) by name, like any
whole-job metric: a rule that grows the batch while the GPUs idle fires on them, and a
job without GPUs (no such series) leaves it quiet."""

from controlplane.policies.engine import evaluate_rule, parse_policy
from controlplane.policies.rules import JobState, RuleHistory

GROW_WHILE_IDLE = {
    "name": "fill the GPUs",
    "rules": [
        {
            "name": "grow",
            "when": "has(metrics.gpu_util) && gpu_util < 50 && gpu_mem < 60",
            "action": {"type": "set_batch_size", "value": "batch_size * 2"},
            "bounds": {"max": 1024},
        }
    ],
}


def _state(**metrics):
    return JobState(
        step=500, batch_size=64, lr=0.1, workers=2, seconds_running=60.0, metrics=metrics
    )


def test_a_rule_on_gpu_utilisation_and_memory_fires_while_the_gpus_idle():
    (rule,) = parse_policy(GROW_WHILE_IDLE).rules
    firing = evaluate_rule(rule, _state(gpu_util=31.0, gpu_mem=22.5), RuleHistory()).firing
    assert firing is not None and firing.value == 128
    busy = evaluate_rule(rule, _state(gpu_util=97.0, gpu_mem=22.5), RuleHistory())
    assert busy.firing is None


def test_a_job_without_gpu_series_leaves_it_quiet():
    (rule,) = parse_policy(GROW_WHILE_IDLE).rules
    assert evaluate_rule(rule, _state(loss=0.5), RuleHistory()).firing is None
