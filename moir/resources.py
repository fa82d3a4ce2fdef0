"""Time and memory of each GPU job, estimated from the model, the data and a throughput, as SLURM resources.

A job's limit should follow its work: a 24 h limit for a 1 h MMBench-Video run holds a queue slot's worth of
priority for nothing, and a limit that is too short only costs a resume (training checkpoints every
`checkpoint_every` steps). The estimates here are arithmetic on explicit inputs, no measurement:

    training tokens  = train examples x epochs x mean tokens / (1 - padding share)      (moir.batching)
    training time    = training tokens / training throughput
                       + per epoch, the validation pass: val examples x mean tokens / (3 x throughput)
                         (a forward pass is about a third of forward + backward)
                       + loading the model (load_s)
    evaluation time  = prefill: examples x mean tokens / (3 x throughput)
                       + decoding: ceil(examples / batch) x new tokens x the time of one decoding step
                         (reading every weight once: weight bytes / memory bandwidth, x decode_overhead)
                       + the analysis pass (attention and hidden states, eager attention: examples x mean
                         tokens / (analysis_factor x throughput)) + load_s
    SLURM runtime    = safety x time, rounded up to whole `round_min` minutes, at least min_runtime_min
    SLURM mem (host) = base_host_gb + the weights once (safetensors pages) + 2 encoder-cache shards,
                       rounded up to 8 GB
    GPU memory       = weights (bf16) + LoRA and AdamW states + activations kept by checkpointing
                       (a check against the GPU's memory, not a SLURM request)

Throughput: `assumed_train_tokens_per_s` derives one from the parameter count (6 x params FLOPs per token for
forward, backward and checkpointing recomputation, at `mfu` of the GPU's peak bf16 FLOPs). Replace it with the
`tokens/s` that benchmarks/gpu_step.py measures on the cluster's GPU (`train ft` rows; `train moir` for MoIR runs).

`python -m moir.resources` prints every paper-suite job and the GPU-hours per table under the assumptions below.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

H100_BF16_FLOPS = 989e12  # dense bf16 peak of an H100 SXM
H100_BANDWIDTH = 3.35e12  # bytes/s of its HBM3


@dataclass(frozen=True)
class Model:
    name: str
    params_b: float  # billions of parameters (language model + vision tower + projector)
    layers: int
    hidden: int


@dataclass(frozen=True)
class JobEstimate:
    name: str
    kind: str  # train | evaluate | encode
    hours: float  # expected GPU time
    runtime_min: int  # the SLURM limit
    mem_mb: int  # the SLURM host memory
    gpu_mem_gb: float  # expected peak GPU memory

    def slurm(self) -> dict[str, int]:
        """The resources of a Snakemake rule / SLURM profile: runtime (minutes), mem_mb."""
        return {"runtime": self.runtime_min, "mem_mb": self.mem_mb}


MODELS = {
    "llava-1.5-7b": Model("llava-1.5-7b", 7.06, 32, 4096),
    "llava-1.5-13b": Model("llava-1.5-13b", 13.35, 40, 5120),
    "qwen2.5-vl": Model("qwen2.5-vl", 8.29, 28, 3584),
}


def assumed_train_tokens_per_s(params_b: float, *, mfu: float = 0.35, peak_flops: float = H100_BF16_FLOPS) -> float:
    """Tokens per second of a LoRA step with full activation checkpointing: 6 x params FLOPs per token."""
    return mfu * peak_flops / (6 * params_b * 1e9)


def decode_step_s(params_b: float, *, bandwidth: float = H100_BANDWIDTH, overhead: float = 1.5) -> float:
    """One greedy decoding step of a batch: every bf16 weight read once, times an overhead."""
    return overhead * 2 * params_b * 1e9 / bandwidth


def slurm_runtime_min(hours: float, *, safety: float = 1.5, round_min: int = 15, min_runtime_min: int = 30) -> int:
    return max(min_runtime_min, round_min * math.ceil(safety * hours * 60 / round_min))


def host_mem_mb(params_b: float, *, shard_gb: float = 2.0, base_host_gb: float = 16.0) -> int:
    gb = base_host_gb + 2 * params_b + 2 * shard_gb
    return int(8 * math.ceil(gb / 8) * 1024)


def train_gpu_mem_gb(model: Model, *, batch: int, seq_len: int, lora_params_m: float = 40.0,
                     checkpoint_every_n: int = 1) -> float:
    """bf16 weights + LoRA (fp32 weights, grads, two AdamW moments) + kept activations + one layer's working set."""
    weights = 2 * model.params_b
    lora = 16 * lora_params_m * 1e6 / 1e9
    tokens = batch * seq_len
    kept = model.layers / checkpoint_every_n * tokens * model.hidden * 2 / 1e9  # layer inputs
    unkept = (model.layers - model.layers / checkpoint_every_n) * tokens * model.hidden * 2 * 12 / 1e9
    working = tokens * model.hidden * 2 * 16 / 1e9  # the recomputed layer, MLP activations and logits' share
    logits = tokens * 32064 * 4 / 1e9
    return weights + lora + kept + unkept + working + logits


def train_job(name: str, model: Model, *, n_train: int, n_val: int, epochs: int, mean_tokens: float,
              padding_share: float, tokens_per_s: float, batch: int = 8, max_tokens: int = 2048,
              checkpoint_every_n: int = 1, load_s: float = 300.0, safety: float = 1.5) -> JobEstimate:
    train_tokens = n_train * epochs * mean_tokens / (1 - padding_share)
    val_tokens = n_val * epochs * mean_tokens / (1 - padding_share)
    seconds = train_tokens / tokens_per_s + val_tokens / (3 * tokens_per_s) + load_s
    hours = seconds / 3600
    return JobEstimate(name, "train", hours, slurm_runtime_min(hours, safety=safety), host_mem_mb(model.params_b),
                       train_gpu_mem_gb(model, batch=batch, seq_len=max_tokens,
                                        checkpoint_every_n=checkpoint_every_n))


def eval_job(name: str, model: Model, *, n_examples: int, mean_tokens: float, new_tokens: int, batch: int,
             tokens_per_s: float, analysis: bool = True, analysis_factor: float = 0.5, load_s: float = 300.0,
             safety: float = 1.5) -> JobEstimate:
    prefill = n_examples * mean_tokens / (3 * tokens_per_s)
    decode = math.ceil(n_examples / batch) * new_tokens * decode_step_s(model.params_b)
    analysis_s = n_examples * mean_tokens / (analysis_factor * 3 * tokens_per_s) if analysis else 0.0
    hours = (prefill + decode + analysis_s + load_s) / 3600
    gpu = 2 * model.params_b + batch * (mean_tokens + new_tokens) * model.layers * model.hidden * 4 / 1e9
    return JobEstimate(name, "evaluate", hours, slurm_runtime_min(hours, safety=safety),
                       host_mem_mb(model.params_b), gpu)


# ----------------------------------------------------------------------------------------------- the paper suite

# Split sizes and mean tokens per example (prompt + visual tokens + answer) of the paper suite's data.
DATASETS = {
    # ScienceQA: 12,726 / 4,241 / 4,241; 51% without an image (~130 tokens), 49% with one (~720)
    "scienceqa": {"train": 12726, "val": 4241, "eval": 4241, "mean_tokens": 419, "new_tokens": 16},
    # VizWiz: 20,523 train, 4,319 val (also the evaluation split); 576 visual + ~70 text
    "vizwiz": {"train": 20523, "val": 4319, "eval": 4319, "mean_tokens": 646, "new_tokens": 16},
    # MMBench-Video: 1,998 questions split 60/10/30 by video; 960 visual + ~330 transcript + question and answer
    "mmbench_video": {"train": 1199, "val": 200, "eval": 599, "mean_tokens": 1380, "new_tokens": 128},
}


def paper_jobs(*, seeds: int = 1, epochs: int = 10, padding_share: float = 0.02,
               tokens_per_s: dict[str, float] | None = None, eval_batch: dict[str, int] | None = None,
               checkpoint_every_n: dict[str, int] | None = None) -> dict[str, list[JobEstimate]]:
    """Every GPU job of the paper suite, per table (config.yaml's grid: table1 pairs x placements x {FT, MoIR},
    table2 noise evaluations, table3 extra ratios, table5 compression arms), under the given throughputs (default:
    assumed)."""
    tokens_per_s = tokens_per_s or {name: assumed_train_tokens_per_s(m.params_b) for name, m in MODELS.items()}
    eval_batch = eval_batch or {"scienceqa": 16, "vizwiz": 16, "mmbench_video": 4}
    checkpoint_every_n = checkpoint_every_n or {"llava-1.5-7b": 2, "llava-1.5-13b": 1, "qwen2.5-vl": 1}
    pairs = [("scienceqa", "llava-1.5-7b"), ("scienceqa", "llava-1.5-13b"), ("vizwiz", "llava-1.5-7b"),
             ("mmbench_video", "qwen2.5-vl")]
    placements = ("attn", "mlp", "proj")

    def train(dataset, model_name, label):
        data, model = DATASETS[dataset], MODELS[model_name]
        return train_job(label, model, n_train=data["train"], n_val=data["val"], epochs=epochs,
                         mean_tokens=data["mean_tokens"], padding_share=padding_share,
                         tokens_per_s=tokens_per_s[model_name], checkpoint_every_n=checkpoint_every_n[model_name])

    def evaluate(dataset, model_name, label, analysis=True):
        data, model = DATASETS[dataset], MODELS[model_name]
        return eval_job(label, model, n_examples=data["eval"], mean_tokens=data["mean_tokens"],
                        new_tokens=data["new_tokens"], batch=eval_batch[dataset], tokens_per_s=tokens_per_s[model_name],
                        analysis=analysis)

    tables: dict[str, list[JobEstimate]] = {"table1": [], "table2": [], "table3": [], "table5": []}
    for seed in range(seeds):
        for dataset, model_name in pairs:
            tables["table1"].append(evaluate(dataset, model_name, f"eval base {dataset} {model_name} s{seed}"))
            for placement in placements:
                for method in ("ft", "moir"):
                    label = f"{dataset} {model_name} {placement} {method} s{seed}"
                    tables["table1"].append(train(dataset, model_name, f"train {label}"))
                    tables["table1"].append(evaluate(dataset, model_name, f"eval {label}"))
        for method in ("ft", "moir"):
            label = f"vizwiz llava-1.5-7b attn {method} s{seed}"
            tables["table2"].append(evaluate("vizwiz", "llava-1.5-7b", f"noise {label}", analysis=False))
        tables["table2"].append(evaluate("vizwiz", "llava-1.5-7b", f"no-image base s{seed}", analysis=False))
        for ratio in (0.05, 0.15):  # 0.10 is table1's run
            label = f"vizwiz llava-1.5-7b attn moir k'={ratio} s{seed}"
            tables["table3"].append(train("vizwiz", "llava-1.5-7b", f"train {label}"))
            tables["table3"].append(evaluate("vizwiz", "llava-1.5-7b", f"eval {label}"))
        # visual-token compression (144/576 and 58/576 kept): estimated at the uncompressed cost, an upper bound
        for keep in ("144/576", "58/576"):
            tables["table5"].append(evaluate("vizwiz", "llava-1.5-7b", f"eval base keep {keep} s{seed}"))
            for method in ("ft", "moir"):
                label = f"vizwiz llava-1.5-7b attn {method} keep {keep} s{seed}"
                tables["table5"].append(train("vizwiz", "llava-1.5-7b", f"train {label}"))
                tables["table5"].append(evaluate("vizwiz", "llava-1.5-7b", f"eval {label}"))
    return tables


def gpu_hours(tables: dict[str, list[JobEstimate]]) -> dict[str, dict[str, float]]:
    """{table: {expected, limits}}: expected GPU-hours and the GPU-hours the SLURM limits reserve."""
    return {table: {"expected": sum(job.hours for job in jobs), "limits": sum(job.runtime_min for job in jobs) / 60}
            for table, jobs in tables.items()}


def main() -> None:
    tables = paper_jobs()
    print("Paper suite GPU jobs (one H100 each; assumed throughput: 6 x params FLOPs/token at 35% MFU; "
          "replace with benchmarks/gpu_step.py's measurement)")
    print(f"{'job':<58}{'hours':>7}{'runtime':>9}{'mem_mb':>8}{'GPU GB':>8}")
    for jobs in tables.values():
        for job in jobs:
            print(f"{job.name:<58}{job.hours:>7.2f}{job.runtime_min:>8}m{job.mem_mb:>8}{job.gpu_mem_gb:>8.0f}")
    print(f"\n{'table':<8}{'jobs':>6}{'expected GPU-h':>16}{'limits GPU-h':>14}")
    for table, hours in gpu_hours(tables).items():
        print(f"{table:<8}{len(tables[table]):>6}{hours['expected']:>16.1f}{hours['limits']:>14.1f}")
    total = gpu_hours(tables)
    print(f"{'total':<8}{sum(len(j) for j in tables.values()):>6}{sum(h['expected'] for h in total.values()):>16.1f}"
          f"{sum(h['limits'] for h in total.values()):>14.1f}")


if __name__ == "__main__":
    main()
