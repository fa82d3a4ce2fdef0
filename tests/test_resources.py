"""Job time and memory estimates: the arithmetic on hand cases, the SLURM rounding, the paper suite's job list."""

from __future__ import annotations

import pytest

from moir.resources import (
    MODELS,
    Model,
    assumed_train_tokens_per_s,
    eval_job,
    gpu_hours,
    paper_jobs,
    slurm_runtime_min,
    train_job,
)


def test_train_job_hand_case():
    model = Model("m", 7.0, 32, 4096)
    job = train_job("t", model, n_train=1000, n_val=100, epochs=2, mean_tokens=500, padding_share=0.5,
                    tokens_per_s=1000.0, load_s=0.0, safety=1.0)
    # 1000 x 2 x 500 / 0.5 = 2e6 tokens at 1000/s; validation 100 x 2 x 500 / 0.5 / 3000
    assert job.hours == pytest.approx((2000 + 200 / 3) / 3600)
    assert job.runtime_min == 45  # 34.4 min rounded up to 15-minute steps
    assert job.slurm() == {"runtime": 45, "mem_mb": job.mem_mb}
    assert job.mem_mb % 8192 == 0 and job.mem_mb >= (16 + 14) * 1024


def test_eval_job_counts_decoding_steps():
    model = Model("m", 7.0, 32, 4096)
    short = eval_job("e", model, n_examples=100, mean_tokens=100, new_tokens=16, batch=10, tokens_per_s=1e9,
                     analysis=False, load_s=0.0)
    long = eval_job("e", model, n_examples=100, mean_tokens=100, new_tokens=32, batch=10, tokens_per_s=1e9,
                    analysis=False, load_s=0.0)
    assert long.hours == pytest.approx(2 * short.hours, rel=1e-3)  # decoding dominates at this throughput


def test_slurm_runtime_rounding():
    assert slurm_runtime_min(0.01) == 30
    assert slurm_runtime_min(1.0) == 90
    assert slurm_runtime_min(1.0, safety=1.0, round_min=60) == 60


def test_paper_jobs_cover_the_grid():
    tables = paper_jobs()
    assert len(tables["table1"]) == 4 * (1 + 3 * 2 * 2)  # pairs x (base eval + placements x methods x train/eval)
    assert len(tables["table2"]) == 3 and len(tables["table3"]) == 4
    assert len(tables["table5"]) == 2 * (1 + 2 * 2)  # keep ratios x (base eval + {FT, MoIR} x train/eval)
    hours = gpu_hours(tables)
    assert all(h["limits"] >= h["expected"] for h in hours.values())
    assert 50 < sum(h["expected"] for h in hours.values()) < 200
    two_seeds = gpu_hours(paper_jobs(seeds=2))
    assert two_seeds["table1"]["expected"] == pytest.approx(2 * hours["table1"]["expected"])
    faster = paper_jobs(tokens_per_s={name: 2 * assumed_train_tokens_per_s(m.params_b)
                                      for name, m in MODELS.items()})
    assert gpu_hours(faster)["table3"]["expected"] < hours["table3"]["expected"]
