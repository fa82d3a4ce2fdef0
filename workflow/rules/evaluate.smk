"""Evaluations (moir.evaluate) on each dataset's eval split, into results/<suite>/eval/<name>/<mode>/:

    <dataset>__<model>__base/clean     the base model: the effective ranks every run's rank deltas subtract
    <dataset>__<model>__base/no-image  the base model without media: the shared vision-dependent/irrelevant split
    <run>/clean                        accuracy, MDI/AEI, effective ranks and their deltas against the base
    <run>/noise                        (Table 2's runs) every image or frame replaced by noise: unchanged answers

metrics.json is written last; an interrupted evaluation resumes from its predictions.parts/ (not a declared
output, so Snakemake keeps it).
"""


rule evaluate_base:
    input:
        unpack(lambda wc: eval_inputs(*BASES[wc.base])),
    output:
        predictions=f"{RESULTS}/eval/{{base}}/clean/predictions.parquet",
        metrics=f"{RESULTS}/eval/{{base}}/clean/metrics.json",
    log:
        f"{LOGS}/evaluate/{{base}}_clean.log",
    benchmark:
        f"{BENCHMARKS}/evaluate/{{base}}_clean.tsv"
    wildcard_constraints:
        base=one_of(BASES),
    conda:
        ENV
    threads: THREADS["evaluate"]
    resources:
        mem_mb=4000,
        runtime=480,
        gpu=GPU,
    params:
        model=lambda wc: model_source(BASES[wc.base][1]),
        revision=lambda wc: revision_arg(BASES[wc.base][1]),
        data=lambda wc, input: eval_data_args(input),
        options=options(SC["evaluate"], EVALUATE_OPTIONS),
        generation=lambda wc: generation_args(BASES[wc.base][0]),
        rank_layer=SC["evaluate"]["rank_layer"],
        judge=lambda wc: judge_args(BASES[wc.base][0]),
        device=SC["device"],
        out=lambda wc, output: os.path.dirname(output.metrics),
    shell:
        "python -m moir.evaluate --model {params.model} {params.revision} --run-name {wildcards.base}"
        " --manifest {input.manifest} {params.data} --mode clean {params.options} {params.generation}"
        " --rank-layer {params.rank_layer} {params.judge} --device {params.device} --out-dir {params.out} 2> {log}"


rule vision_split:
    input:
        unpack(lambda wc: eval_inputs(*BASES[wc.base])),
    output:
        predictions=f"{RESULTS}/eval/{{base}}/no-image/predictions.parquet",
        metrics=f"{RESULTS}/eval/{{base}}/no-image/metrics.json",
        split=f"{RESULTS}/eval/{{base}}/no-image/vision_split.parquet",
    log:
        f"{LOGS}/evaluate/{{base}}_no-image.log",
    benchmark:
        f"{BENCHMARKS}/evaluate/{{base}}_no-image.tsv"
    wildcard_constraints:
        base=one_of(BASES),
    conda:
        ENV
    threads: THREADS["evaluate"]
    resources:
        mem_mb=4000,
        runtime=480,
        gpu=GPU,
    params:
        model=lambda wc: model_source(BASES[wc.base][1]),
        revision=lambda wc: revision_arg(BASES[wc.base][1]),
        data=lambda wc, input: eval_data_args(input),
        options=options(SC["evaluate"], EVALUATE_OPTIONS),
        generation=lambda wc: generation_args(BASES[wc.base][0]),
        judge=lambda wc: judge_args(BASES[wc.base][0]),
        device=SC["device"],
        out=lambda wc, output: os.path.dirname(output.metrics),
    shell:
        "python -m moir.evaluate --model {params.model} {params.revision} --run-name {wildcards.base}"
        " --manifest {input.manifest} {params.data} --mode no-image {params.options} {params.generation}"
        " {params.judge} --device {params.device} --out-dir {params.out} 2> {log}"


rule evaluate_run:
    input:
        unpack(run_eval_inputs),
    output:
        predictions=f"{RESULTS}/eval/{{run}}/clean/predictions.parquet",
        metrics=f"{RESULTS}/eval/{{run}}/clean/metrics.json",
    log:
        f"{LOGS}/evaluate/{{run}}_clean.log",
    benchmark:
        f"{BENCHMARKS}/evaluate/{{run}}_clean.tsv"
    wildcard_constraints:
        run=one_of(RUNS),
    conda:
        ENV
    threads: THREADS["evaluate"]
    resources:
        mem_mb=4000,
        runtime=480,
        gpu=GPU,
    params:
        model=lambda wc: model_source(run_of(wc).model),
        revision=lambda wc: revision_arg(run_of(wc).model),
        data=lambda wc, input: eval_data_args(input),
        base=lambda wc, input: os.path.dirname(input.base_metrics),
        options=options(SC["evaluate"], EVALUATE_OPTIONS),
        generation=lambda wc: generation_args(run_of(wc).dataset),
        rank_layer=SC["evaluate"]["rank_layer"],
        judge=lambda wc: judge_args(run_of(wc).dataset),
        device=SC["device"],
        out=lambda wc, output: os.path.dirname(output.metrics),
    shell:
        "python -m moir.evaluate --model {params.model} {params.revision} --adapter {input.adapter}"
        " --run-name {wildcards.run} --manifest {input.manifest} {params.data} --mode clean {params.options}"
        " {params.generation} --rank-layer {params.rank_layer} --base-eval {params.base} {params.judge}"
        " --device {params.device} --out-dir {params.out} 2> {log}"


rule evaluate_noise:
    input:
        unpack(noise_eval_inputs),
    output:
        predictions=f"{RESULTS}/eval/{{run}}/noise/predictions.parquet",
        metrics=f"{RESULTS}/eval/{{run}}/noise/metrics.json",
    log:
        f"{LOGS}/evaluate/{{run}}_noise.log",
    benchmark:
        f"{BENCHMARKS}/evaluate/{{run}}_noise.tsv"
    wildcard_constraints:
        run=one_of(NOISE_RUNS),
    conda:
        ENV
    threads: THREADS["evaluate"]
    resources:
        mem_mb=4000,
        runtime=480,
        gpu=GPU,
    params:
        model=lambda wc: model_source(run_of(wc).model),
        revision=lambda wc: revision_arg(run_of(wc).model),
        data=lambda wc, input: eval_data_args(input),
        clean=lambda wc, input: os.path.dirname(input.clean_metrics),
        options=options(SC["evaluate"], EVALUATE_OPTIONS),
        generation=lambda wc: generation_args(run_of(wc).dataset),
        noise_seed=SC["evaluate"]["noise_seed"],
        judge=lambda wc: judge_args(run_of(wc).dataset),
        device=SC["device"],
        out=lambda wc, output: os.path.dirname(output.metrics),
    shell:
        "python -m moir.evaluate --model {params.model} {params.revision} --adapter {input.adapter}"
        " --run-name {wildcards.run} --manifest {input.manifest} {params.data} --mode noise"
        " --noise-seed {params.noise_seed} {params.options} {params.generation} --clean-eval {params.clean}"
        " --vision-split {input.vision_split} {params.judge} --device {params.device} --out-dir {params.out} 2> {log}"
