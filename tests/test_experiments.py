"""libra frontier: points across dvc experiments, from `dvc exp show --csv` (the real run is in test_pipeline)."""

from __future__ import annotations

import pytest

from libra.errors import LibraError
from libra.eval.experiments import distinct, dvc_exp_table, experiment_points, frontier_markdown, plot_experiments

TABLE = (
    "Experiment,rev,State,dpo.beta,metrics/eval/dpo/in_domain.json:safety,metrics/eval/dpo/in_domain.json:utility,"
    "metrics/eval/dpo/in_domain.json:ci.safety.lo,metrics/eval/dpo~0.5/xstest.json:safety,metrics/eval/dpo~0.5/xstest.json:utility\n"
    ",workspace,,0.1,0.5,0.75,0.4,0.2,0.9\n"
    "exp-a,abc1234,Success,0.3,0.625,0.5,0.5,,\n"
    "exp-b,def5678,Running,0.05,,,,,\n"
)


def test_points_come_from_the_eval_columns_only() -> None:
    points = experiment_points(TABLE)
    assert [(p.experiment, p.model, p.suite, p.safety, p.utility) for p in points] == [
        ("workspace", "dpo", "in_domain", 0.5, 0.75),
        ("workspace", "dpo~0.5", "xstest", 0.2, 0.9),
        ("exp-a", "dpo", "in_domain", 0.625, 0.5),
    ]
    table = frontier_markdown(points)
    assert "| exp-a | dpo | 0.625 / 0.500 | - |" in table and "exp-b" not in table


def test_plot_is_written(tmp_path) -> None:
    plot_experiments(experiment_points(TABLE), tmp_path / "exp.png")
    assert (tmp_path / "exp.png").read_bytes()[:4] == b"\x89PNG"


def test_outside_a_dvc_project_the_error_names_the_command(tmp_path) -> None:
    with pytest.raises(LibraError, match="dvc exp show"):
        dvc_exp_table(cwd=tmp_path)


def test_runs_repeating_their_parents_scores_are_listed_once() -> None:
    # a commit repeating exp-a's scores is dropped; an experiment that scores the same is kept
    repeated = TABLE + ",0123abc,,0.3,0.625,0.5,0.5,,\n" + "exp-c,4567def,Success,0.2,0.625,0.5,0.5,,\n"
    names = [p.experiment for p in distinct(experiment_points(repeated))]
    assert names == ["workspace", "workspace", "exp-a", "exp-c"]
