"""The benchmark runner: protocol, commands, the JSONL ledger, the table and the claims."""

import dataclasses
import json
import math
import os
import shlex
import statistics
import subprocess

import numpy as np
import pytest
from absl import flags
from ml_collections import config_flags

from ssljax import benchmark
from ssljax.config import check_overrides

SUITE = benchmark.FASHION_MNIST


def _protocol_value(c, key):
    node = c
    for p in key.split("."):
        node = node[p]
    return node


@pytest.mark.parametrize("method", sorted(SUITE.entries))
def test_every_method_takes_the_protocol_through_the_command_line(method):
    """The recorded command parses (absl + ml_collections, as ssljax.main does) into exactly
    the config the runner resolves, and that config carries every protocol value."""
    entry = SUITE.entries[method]
    args = benchmark.command(SUITE, method, 3, "/tmp/w")
    config_arg = args[3]
    assert config_arg == f"--config=configs/{entry.config}.py:{entry.variant}"
    overrides = args[5:]
    fv = flags.FlagValues()
    path = os.path.join(benchmark.REPO, "configs", f"{entry.config}.py")
    argv = ["prog", f"--config={path}:{entry.variant}", *overrides]
    config_flags.DEFINE_config_file("config", path, flag_values=fv, lock_config=True,
                                    sys_argv=argv)
    fv(argv)
    parsed = fv.config
    check_overrides(overrides, parsed)  # no protocol key is unknown to this method
    resolved = benchmark.load_config(SUITE, method, 3)
    assert parsed.seed == resolved.seed == 3
    for key, value in SUITE.protocol:
        got = _protocol_value(parsed, key)
        assert (tuple(got) if isinstance(got, (list, tuple)) else got) == value, key
        assert _protocol_value(resolved, key) == _protocol_value(parsed, key), key
    assert parsed.to_json() == resolved.to_json()


def test_protocol_id_changes_with_the_protocol_only():
    other = dataclasses.replace(SUITE, protocol=tuple(
        (k, 9 if k == "num_epochs" else v) for k, v in SUITE.protocol))
    assert other.protocol_id != SUITE.protocol_id
    same = dataclasses.replace(SUITE, protocol=tuple(reversed(SUITE.protocol)))
    assert same.protocol_id == SUITE.protocol_id
    assert SUITE.epochs == dict(SUITE.protocol)["num_epochs"]


def _row(method, seed, linear, knn=80.0, protocol=SUITE.protocol_id, **kw):
    return dict(suite=SUITE.name, protocol=protocol, method=method, seed=seed, linear_top1=linear,
                knn_top1=knn, effective_rank=10.0, wall_s=60.0, **kw)


def test_summary_is_the_mean_and_sample_std_of_this_protocols_rows():
    rows = [_row("simclr", 0, 85.0), _row("simclr", 1, 86.0), _row("simclr", 2, 88.0),
            _row("simclr", 3, 10.0, protocol="other"),  # another protocol: left out
            _row("byol", 0, 70.0), _row("byol", 0, 71.0)]  # a rerun replaces the older row
    s = benchmark.summarise(SUITE, rows)
    mean, std = s["simclr"]["linear_top1"]
    assert s["simclr"]["seeds"] == [0, 1, 2]
    assert mean == pytest.approx(np.mean([85, 86, 88]))
    assert std == pytest.approx(np.std([85, 86, 88], ddof=1))
    assert s["byol"]["n"] == 1 and s["byol"]["linear_top1"][0] == 71.0
    assert math.isnan(s["byol"]["linear_top1"][1])


@pytest.mark.parametrize("better,other,verdict", [
    ([90, 91, 92], [85, 86, 87], "supported"),
    ([80, 81, 82], [85, 86, 87], "contradicted"),
    ([85, 86, 87], [86, 87, 88], "cannot separate"),
])
def test_claim_verdicts_from_one_std_intervals(better, other, verdict):
    rows = ([_row("metamask", s, v) for s, v in enumerate(better)]
            + [_row("barlow_twins", s, v) for s, v in enumerate(other)])
    claim = benchmark.Claim("MetaMask", "x", "metamask", ("barlow_twins",))
    got, evidence = benchmark.claim_verdict(benchmark.summarise(SUITE, rows), claim)
    assert got == verdict
    assert f"{statistics.fmean(better):.2f}" in evidence


def test_claim_needs_seeds_and_rows():
    claim = benchmark.Claim("MetaMask", "x", "metamask", ("barlow_twins",))
    assert benchmark.claim_verdict({}, claim)[0] == "not run yet"
    rows = [_row("metamask", 0, 90.0), _row("barlow_twins", 0, 80.0)]
    verdict, evidence = benchmark.claim_verdict(benchmark.summarise(SUITE, rows), claim)
    assert verdict == "needs 3 seeds"
    assert evidence == "90.00 (metamask, 1 seed) vs 80.00 (barlow_twins, 1 seed)"
    # Two seeds of one side are not enough either, however far apart the means are.
    rows += [_row("metamask", s, 90.0 + s) for s in (1, 2)] + [_row("barlow_twins", 1, 81.0)]
    verdict, evidence = benchmark.claim_verdict(benchmark.summarise(SUITE, rows), claim)
    assert verdict == "needs 3 seeds"
    assert evidence == "91.00 ± 1.00 (metamask, 3 seeds) vs 80.50 ± 0.71 (barlow_twins, 2 seeds)"


def test_targets_follow_the_issue():
    rows = [_row("raw_pixels", 0, 84.5), _row("simclr", 0, 86.0), _row("moco", 0, 85.0),
            _row("ce", 0, 92.5), _row("supcon", 0, 80.0)]
    s = benchmark.summarise(SUITE, rows)
    assert benchmark.target(SUITE, "simclr", s["simclr"], 84.5).endswith("short")  # needs +2
    assert benchmark.target(SUITE, "moco", s["moco"], 84.5).endswith("met")  # needs > raw
    assert benchmark.target(SUITE, "ce", s["ce"], 84.5).endswith("met")
    assert benchmark.target(SUITE, "supcon", s["supcon"], 84.5) == ""


def test_runner_appends_one_row_per_run_and_skips_what_is_done(tmp_path, monkeypatch):
    calls = []

    def fake_run(suite, method, seed, workroot):
        calls.append((method, seed))
        return _row(method, seed, 80.0 + seed, command="cmd")

    def fake_baselines(suite, seed):
        calls.append(("baselines", seed))
        return [_row("raw_pixels", seed, 84.5), _row("random_encoder", seed, 75.0)]

    monkeypatch.setattr(benchmark, "run_method", fake_run)
    monkeypatch.setattr(benchmark, "baseline_rows", fake_baselines)
    results = str(tmp_path / "fashion_mnist.jsonl")
    argv = ["--methods", "baselines", "simclr", "byol", "--seeds", "0", "1", "--results", results]
    assert benchmark.main(argv) == 0
    assert len(calls) == 6
    rows = benchmark.read_rows(results)
    assert len(rows) == 8
    assert {(r["method"], r["seed"]) for r in rows} >= {("simclr", 1), ("random_encoder", 0)}
    assert benchmark.main(argv) == 0  # everything is done: nothing runs, nothing is appended
    assert len(calls) == 6 and len(benchmark.read_rows(results)) == 8
    md = (tmp_path / "fashion_mnist.md").read_text()
    assert "| SimCLR | 0,1 | 80.50 ± 0.71 |" in md
    assert (tmp_path / "fashion_mnist.png").stat().st_size > 1000


def test_report_keeps_the_hand_written_notes(tmp_path):
    (tmp_path / "fashion_mnist.md").write_text("# old\n\n## Notes\n\nBYOL is short because x.\n")
    benchmark.report(SUITE, [_row("simclr", 0, 85.0)], out_dir=str(tmp_path))
    text = (tmp_path / "fashion_mnist.md").read_text()
    assert text.rstrip().endswith("## Notes\n\nBYOL is short because x.")
    assert "| SimCLR | 0 | 85.00 |" in text


def test_unknown_method_and_bad_ledger_are_one_sentence(tmp_path, capsys):
    assert benchmark.main(["--methods", "simclrr", "--results", str(tmp_path / "x.jsonl")]) == 2
    assert "unknown method(s) simclrr" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(_row("simclr", 0, 1.0)) + "\n{not json\n")
    with pytest.raises(SystemExit, match="line 2 of .*bad.jsonl is not JSON"):
        benchmark.read_rows(str(bad))


@pytest.mark.integration
def test_a_tiny_suite_end_to_end(tmp_path):
    """Real runs (two steps of a width-4 network on 512 images) through the same code paths."""
    tiny = dataclasses.replace(SUITE, name="tiny", protocol=SUITE.protocol + (
        ("model.width", 4), ("model.stage_widths", (4, 8, 8, 16)), ("total_steps", 2),
        ("batch_size", 64), ("data.train_split", "train[:512]"), ("data.test_split", "test[:256]"),
        ("eval.linear_epochs", 2), ("eval.knn_k", 5), ("checkpoint_every", 1000)))
    rows = benchmark.baseline_rows(tiny, 0)
    assert [r["method"] for r in rows] == ["raw_pixels", "random_encoder"]
    row = benchmark.run_method(tiny, "simclr", 0, str(tmp_path))
    for key in ("linear_top1", "knn_top1", "effective_rank", "wall_s", "commit", "command"):
        assert row[key] is not None, key
    assert "--config.total_steps=2" in row["command"]
    assert 0 < row["effective_rank"] <= 16


def test_a_finished_run_without_its_row_is_recorded_not_rerun(tmp_path, monkeypatch):
    """The runner was stopped after the run wrote results.json but before the row: the next
    start records the run from its files instead of training again."""
    workdir = tmp_path / SUITE.name / "vicreg_s2"
    workdir.mkdir(parents=True)
    (workdir / "config.json").write_text("{}")
    (workdir / "results.json").write_text(json.dumps(
        {"linear_probe_top1": 83.1, "knn_top1": 79.9, "effective_rank": 31.5,
         "train_time_s": 600.0, "eval_time_s": 20.5}))
    monkeypatch.setattr(benchmark, "_run", lambda *a: pytest.fail("the run was started again"))
    row = benchmark.run_method(SUITE, "vicreg", 2, str(tmp_path))
    assert (row["linear_top1"], row["knn_top1"], row["effective_rank"]) == (83.1, 79.9, 31.5)
    assert row["wall_s"] == 620.5 and row["recovered"] and row["commit"].endswith("?")
    assert (row["method"], row["seed"], row["protocol"]) == ("vicreg", 2, SUITE.protocol_id)


def test_a_resumed_run_counts_the_training_time_before_the_resume(tmp_path, monkeypatch):
    """The row's wall time is this process's wall time plus the earlier segments' training."""
    def fake_run(cmd, cwd, stdout, stderr):
        workdir = next(a.split("=", 1)[1] for a in cmd if a.startswith("--workdir="))
        with open(os.path.join(cwd, workdir, "results.json"), "w") as f:
            json.dump({"linear_probe_top1": 83.1, "knn_top1": 79.9, "train_time_s": 900.0,
                       "eval_time_s": 20.0, "train_time_earlier_s": 500.0}, f)
        return subprocess.CompletedProcess(cmd, 0)
    monkeypatch.setattr(benchmark.subprocess, "run", fake_run)
    monkeypatch.setattr(benchmark, "_base_row", lambda suite, m, seed, cmd: {})
    row = benchmark.run_method(SUITE, "vicreg", 1, str(tmp_path))
    assert 500.0 <= row["wall_s"] < 510.0 and row["train_s"] == 900.0


def test_force_reruns_and_the_new_row_supersedes(tmp_path, monkeypatch):
    monkeypatch.setattr(benchmark, "run_method",
                        lambda suite, m, seed, root: _row(m, seed, 90.0, command="cmd"))
    results = tmp_path / "fashion_mnist.jsonl"
    results.write_text(json.dumps(_row("simclr", 0, 80.0)) + "\n")
    old = tmp_path / "w" / SUITE.name / "simclr_s0"
    old.mkdir(parents=True)
    (old / "results.json").write_text("{}")
    argv = ["--methods", "simclr", "--results", str(results), "--workroot", str(tmp_path / "w")]
    assert benchmark.main(argv + ["--force"]) == 0
    rows = benchmark.read_rows(str(results))
    assert [r["linear_top1"] for r in rows] == [80.0, 90.0]  # both kept in the ledger
    assert benchmark.summarise(SUITE, rows)["simclr"]["linear_top1"][0] == 90.0
    kept = [p.name for p in (tmp_path / "w" / SUITE.name).iterdir()]
    assert len(kept) == 1 and kept[0].startswith("simclr_s0.before-")  # moved, not deleted


@pytest.mark.parametrize("lr, resumed", [(None, True), (0.123, False)])
def test_force_resumes_an_unfinished_run_of_the_same_config_only(tmp_path, monkeypatch, lr,
                                                                 resumed):
    """A forced rerun that the end of a session stopped continues from its checkpoints when
    --force is given again; an unfinished run of another recipe is moved aside."""
    from ssljax import workdir as workdir_lib
    monkeypatch.setattr(benchmark, "run_method",
                        lambda suite, m, seed, root: _row(m, seed, 90.0, command="cmd"))
    results = tmp_path / "fashion_mnist.jsonl"
    results.write_text(json.dumps(_row("simclr", 0, 80.0)) + "\n")
    config = benchmark.load_config(SUITE, "simclr", 0)
    if lr is not None:  # the unfinished run was started under another recipe
        config.optimizer.lr = lr
    unfinished = tmp_path / "w" / SUITE.name / "simclr_s0"
    (unfinished / "checkpoints").mkdir(parents=True)
    (unfinished / workdir_lib.RUN_RECORD).write_text(
        json.dumps({"config": workdir_lib.config_record(config)}))
    argv = ["--methods", "simclr", "--results", str(results), "--workroot", str(tmp_path / "w")]
    assert benchmark.main(argv + ["--force"]) == 0
    kept = sorted(p.name for p in (tmp_path / "w" / SUITE.name).iterdir())
    assert (kept == ["simclr_s0"]) == resumed, kept
    assert [r["linear_top1"] for r in benchmark.read_rows(str(results))] == [80.0, 90.0]


def test_dry_run_prints_the_rows_command_even_when_done(tmp_path, capsys):
    results = tmp_path / "fashion_mnist.jsonl"
    results.write_text(json.dumps(_row("simclr", 0, 80.0)) + "\n")
    assert benchmark.main(["--methods", "simclr", "--dry-run", "--results", str(results)]) == 0
    out = capsys.readouterr().out.strip().splitlines()[-1]
    assert out == shlex.join(benchmark.command(SUITE, "simclr", 0,
                                               "runs/benchmark/fashion_mnist/simclr_s0"))


def test_diagnostic_runs_have_their_own_table_and_no_bar_target_or_default_run(tmp_path):
    """A diagnostic entry varies one method: it is never run by default, is left out of the
    main table, the chart and the targets, and its own table shows it against its method."""
    assert set(SUITE.diagnostics) and not set(SUITE.diagnostics) & set(benchmark.DEFAULT_ORDER)
    assert set(SUITE.methods) == set(benchmark.DEFAULT_ORDER)
    for name in SUITE.diagnostics:
        entry = SUITE.entries[name]
        assert entry.of in SUITE.methods and entry.question, name
    rows = [_row("raw_pixels", 0, 84.5), _row("supcon", 0, 89.9, knn=89.6),
            _row("supcon_one_view", 0, 85.0, knn=83.0)]
    summary = benchmark.summarise(SUITE, rows)
    main = "\n".join(benchmark.table_lines(SUITE, summary))
    assert "one view" not in main and "| SupCon | 0 |" in main
    diag = benchmark.diagnostics_lines(SUITE, summary)
    assert len(diag) == 3 and "| SupCon, one view (seeds 0) | 85.00 | 83.00 | -4.90, -6.60 (vs SupCon)" in diag[2]
    assert benchmark.diagnostics_lines(SUITE, benchmark.summarise(SUITE, rows[:2])) == []
    md = benchmark.report(SUITE, rows, out_dir=str(tmp_path))
    text = open(md).read()
    assert "## Diagnostic runs" in text and "--methods supcon_one_view" in text
