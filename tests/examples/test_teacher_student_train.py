"""The teacher–student example trains with two workers through the public runtime API and
reports its held-out accuracy as it goes."""

from agent.local import job_series, run_workers


def test_teacher_student_learns_with_two_workers_and_reports_val_accuracy():
    messages = run_workers(
        2,
        {
            "batch_size": 64, "lr": 0.05, "steps": 40, "log_every": 10, "eval_every": 20,
            "samples": 4000,
        },
        module="examples.teacher_student.train",
    )  # fmt: skip
    loss = job_series(messages[0], "loss")
    assert sorted(loss) == [10, 20, 30, 40] and loss[40] < loss[10]
    val = job_series(messages[0], "val_accuracy")
    assert sorted(val) == [20, 40]
    assert val[40] > 0.2  # ten classes: chance is about 0.1
