"""Evaluations (moir.evaluate) on each dataset's eval split, into results/<suite>/eval/<name>/<mode>/:

    <dataset>__<model>__base/clean     the base model: the effective ranks every run's rank deltas subtract
    <dataset>__<model>__base/no-image  the base model without media: the shared vision-dependent/irrelevant split
    <run>/clean                        accuracy, MDI/AEI, effective ranks and their deltas against the base
    <run>/noise                        (Table 2's runs) every image or frame replaced by noise: unchanged answers

One rule for the clean and noise evaluations of runs and base models (the wildcard `evaluation` is
"<name>/<mode>", one of the plan's), one for the no-image evaluation, which also writes the vision split.
metrics.json is written last; an interrupted evaluation resumes from its predictions.parts/ (not a declared
output, so Snakemake keeps it).

Judged datasets (MMBench-Video: free-form answers scored 0-3 by a judge): the GPU job (rule `predict`) generates
and analyses with `--judge defer` into <evaluation>/predict/ and releases the GPU; the rule `judge`, a CPU job,
asks the judge concurrently (judge.workers requests in flight, retries with backoff, the reply cache
<evaluation>/judge_cache.jsonl) and writes the evaluation's final predictions.parquet and metrics.json
(moir.evaluate.judge_stage). A judge setting reruns the judge jobs and what reads them, never a GPU job.
"""


rule evaluate:
    input:
        unpack(lambda wc: PLAN.evaluate_inputs(wc.evaluation)),
    output:
        predictions=PLAN.predictions("{evaluation}"),
        metrics=PLAN.metrics("{evaluation}"),
    log:
        f"{LOGS}/evaluate/{{evaluation}}.log",
    benchmark:
        f"{BENCHMARKS}/evaluate/{{evaluation}}.tsv"
    wildcard_constraints:
        evaluation=one_of(judged_keys(False)),
    conda:
        ENV
    threads: THREADS["evaluate"]
    resources:
        mem_mb=estimated(evaluate_estimate, lambda wc: wc.evaluation, "mem_mb", 4000),
        runtime=estimated(evaluate_estimate, lambda wc: wc.evaluation, "runtime", 480),
        gpu=GPU,
    params:
        settings=lambda wc: PLAN.evaluate_settings(wc.evaluation).to_json(),
        code=evaluate_code,
        paths=evaluate_paths,
        hub=hub_lock_option,
        out=lambda wc, output: dirname(output.metrics),
    shell:
        "python -m moir.evaluate {params.paths:q} {params.hub:q} --out-dir {params.out:q} --settings {params.settings:q}"
        " 2> {log:q}"


rule predict:
    """The GPU part of a judged evaluation: generation and analysis, the open-ended answers left to `judge`."""
    input:
        unpack(lambda wc: PLAN.evaluate_inputs(wc.evaluation)),
    output:
        predictions=f"{PLAN.predict_dir('{evaluation}')}/predictions.parquet",
        metrics=f"{PLAN.predict_dir('{evaluation}')}/metrics.json",
    log:
        f"{LOGS}/evaluate/{{evaluation}}.predict.log",
    benchmark:
        f"{BENCHMARKS}/evaluate/{{evaluation}}.predict.tsv"
    wildcard_constraints:
        evaluation=one_of(judged_keys(True)),
    conda:
        ENV
    threads: THREADS["evaluate"]
    resources:
        mem_mb=estimated(evaluate_estimate, lambda wc: wc.evaluation, "mem_mb", 4000),
        runtime=estimated(evaluate_estimate, lambda wc: wc.evaluation, "runtime", 480),
        gpu=GPU,
    params:
        settings=lambda wc: PLAN.evaluate_settings(wc.evaluation).to_json(),
        code=evaluate_code,
        paths=evaluate_paths,
        hub=hub_lock_option,
        out=lambda wc, output: dirname(output.metrics),
    shell:
        "python -m moir.evaluate {params.paths:q} {params.hub:q} --out-dir {params.out:q} --settings {params.settings:q}"
        " 2> {log:q}"


rule judge:
    """The judge of a judged evaluation, on a CPU: scores, then the final predictions and metrics."""
    input:
        unpack(lambda wc: PLAN.judge_inputs(wc.evaluation)),
    output:
        scores=PLAN.judge_scores("{evaluation}"),
        predictions=PLAN.predictions("{evaluation}"),
        metrics=PLAN.metrics("{evaluation}"),
    log:
        f"{LOGS}/evaluate/{{evaluation}}.judge.log",
    benchmark:
        f"{BENCHMARKS}/evaluate/{{evaluation}}.judge.tsv"
    wildcard_constraints:
        evaluation=one_of(judged_keys(True)),
    conda:
        ENV
    threads: 2
    resources:
        mem_mb=4000,
        runtime=120,
    params:
        settings=PLAN.judge_settings().to_json(),
        code=code("judge"),
        hub=hub_lock_option,
        predict=lambda wc, input: dirname(input.predictions),
        out=lambda wc, output: dirname(output.metrics),
        cache=lambda wc, output: f"{dirname(output.metrics)}/judge_cache.jsonl",
    shell:
        "python -m moir.evaluate.judge_stage --predict-dir {params.predict:q} --manifest {input.manifest:q}"
        " {params.hub:q} --out-dir {params.out:q} --cache {params.cache:q} --settings {params.settings:q} 2> {log:q}"


rule vision_split:
    input:
        unpack(lambda wc: PLAN.evaluate_inputs(f"{wc.base}/{NO_IMAGE}")),
    output:
        predictions=PLAN.predictions(f"{{base}}/{NO_IMAGE}"),
        metrics=PLAN.metrics(f"{{base}}/{NO_IMAGE}"),
        split=PLAN.vision_split("{base}"),
    log:
        f"{LOGS}/evaluate/{{base}}/{NO_IMAGE}.log",
    benchmark:
        f"{BENCHMARKS}/evaluate/{{base}}/{NO_IMAGE}.tsv"
    wildcard_constraints:
        base=one_of(key.split("/")[0] for key, ev in PLAN.evaluations.items() if ev.mode == NO_IMAGE),
    conda:
        ENV
    threads: THREADS["evaluate"]
    resources:
        mem_mb=estimated(evaluate_estimate, lambda wc: f"{wc.base}/{NO_IMAGE}", "mem_mb", 4000),
        runtime=estimated(evaluate_estimate, lambda wc: f"{wc.base}/{NO_IMAGE}", "runtime", 480),
        gpu=GPU,
    params:
        settings=lambda wc: PLAN.evaluate_settings(f"{wc.base}/{NO_IMAGE}").to_json(),
        code=code("evaluate"),
        paths=evaluate_paths,
        hub=hub_lock_option,
        out=lambda wc, output: dirname(output.metrics),
    shell:
        "python -m moir.evaluate {params.paths:q} {params.hub:q} --out-dir {params.out:q} --settings {params.settings:q}"
        " 2> {log:q}"
