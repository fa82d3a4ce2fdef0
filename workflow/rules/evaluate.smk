"""Evaluations (moir.evaluate) on each dataset's eval split, into results/<suite>/eval/<name>/<mode>/:

    <dataset>__<model>__base/clean     the base model: effective ranks that every run's rank deltas subtract
    <dataset>__<model>__base/no-image  the base model without media: the shared vision-dependent/irrelevant split
    <run>/clean                        accuracy, MDI/AEI, effective ranks and their deltas against the base
    <run>/noise                        Table 2 runs: every image/frame replaced by noise, unchanged predictions

metrics.json is written last; an interrupted evaluation resumes from its predictions.parts/ (not a declared
output, so Snakemake keeps it).
"""

EVALUATE_OPTIONS = ("batch_size", "max_new_tokens")
BASE_NAMES = {f"{dataset}__{model}__base": (dataset, model) for dataset, model in BASES}


def eval_dir(name, mode):
    return f"{RESULTS}/eval/{name}/{mode}"


def eval_split_inputs(dataset, model, *, cache=True, pixels=False):
    """The eval split's manifest, plus its token cache (clean) or its frames (noise on a video dataset)."""
    split = split_name(dataset, "eval")
    inputs = {"manifest": manifest(dataset, split), "model": model_inputs(model), "code": moir_sources("moir.evaluate")}
    if cache:
        inputs["cache"] = cache_meta(dataset, split, model)
    if pixels and is_video(dataset):
        inputs["frames"] = frames(dataset, split)
    if uses_transcripts(dataset):
        inputs["transcripts"] = transcripts(dataset, split)
    return inputs


def data_args(input):
    """--cache-dir / --frames / --transcripts for the inputs a rule declared."""
    args = []
    if "cache" in input.keys():
        args.append(f"--cache-dir {os.path.dirname(input.cache)}")
    if "frames" in input.keys():
        args.append(f"--frames {input.frames}")
    if "transcripts" in input.keys():
        args.append(f"--transcripts {input.transcripts}")
    return " ".join(args)


def judge_args(dataset):
    """The judge of open-ended answers, for the datasets that need one (others do not depend on its settings)."""
    if not SC["datasets"][dataset]["judge"]:
        return ""
    judge = SC["judge"]
    if judge["backend"] == "openai":
        return (
            f"--judge openai --judge-url {judge['url']} --judge-model {judge['model']} "
            f"--judge-api-key-env {judge['api_key_env']}"
        )
    return f"--judge local --judge-model {judge['model']}"


rule evaluate_base:
    input:
        unpack(lambda wc: eval_split_inputs(*BASE_NAMES[wc.base])),
    output:
        predictions=f"{RESULTS}/eval/{{base}}/clean/predictions.parquet",
        metrics=f"{RESULTS}/eval/{{base}}/clean/metrics.json",
    wildcard_constraints:
        base=one_of(BASE_NAMES),
    params:
        model=lambda wc: model_source(BASE_NAMES[wc.base][1]),
        data=lambda wc, input: data_args(input),
        options=options(SC["evaluate"], EVALUATE_OPTIONS),
        rank_layer=SC["evaluate"]["rank_layer"],
        limit=f"--limit {SC['evaluate']['limit']}" if SC["evaluate"]["limit"] else "",
        judge=lambda wc: judge_args(BASE_NAMES[wc.base][0]),
        device=SC["device"],
        out=lambda wc, output: os.path.dirname(output.metrics),
    log:
        f"{LOGS}/evaluate/{{base}}_clean.log",
    benchmark:
        f"{BENCHMARKS}/evaluate/{{base}}_clean.tsv"
    threads: THREADS["evaluate"]
    resources:
        mem_mb=4000,
        runtime=480,
        gpu=GPU,
    conda:
        ENV
    shell:
        "python -m moir.evaluate --model {params.model} --run-name {wildcards.base} --manifest {input.manifest}"
        " {params.data} --mode clean {params.options} --rank-layer {params.rank_layer} {params.limit}"
        " {params.judge} --device {params.device} --out-dir {params.out} 2> {log}"


rule vision_split:
    input:
        unpack(lambda wc: eval_split_inputs(*BASE_NAMES[wc.base], cache=False)),
    output:
        predictions=f"{RESULTS}/eval/{{base}}/no-image/predictions.parquet",
        metrics=f"{RESULTS}/eval/{{base}}/no-image/metrics.json",
        split=f"{RESULTS}/eval/{{base}}/no-image/vision_split.parquet",
    wildcard_constraints:
        base=one_of(BASE_NAMES),
    params:
        model=lambda wc: model_source(BASE_NAMES[wc.base][1]),
        data=lambda wc, input: data_args(input),
        options=options(SC["evaluate"], EVALUATE_OPTIONS),
        limit=f"--limit {SC['evaluate']['limit']}" if SC["evaluate"]["limit"] else "",
        judge=lambda wc: judge_args(BASE_NAMES[wc.base][0]),
        device=SC["device"],
        out=lambda wc, output: os.path.dirname(output.metrics),
    log:
        f"{LOGS}/evaluate/{{base}}_no-image.log",
    benchmark:
        f"{BENCHMARKS}/evaluate/{{base}}_no-image.tsv"
    threads: THREADS["evaluate"]
    resources:
        mem_mb=4000,
        runtime=480,
        gpu=GPU,
    conda:
        ENV
    shell:
        "python -m moir.evaluate --model {params.model} --run-name {wildcards.base} --manifest {input.manifest}"
        " {params.data} --mode no-image {params.options} {params.limit} {params.judge} --device {params.device}"
        " --out-dir {params.out} 2> {log}"


def run_eval_inputs(wildcards):
    run = run_of(wildcards)
    base = eval_dir(f"{run.dataset}__{run.model}__base", "clean")
    inputs = eval_split_inputs(run.dataset, run.model)
    inputs.update(
        adapter=f"{RESULTS}/runs/{wildcards.run}",
        base_predictions=f"{base}/predictions.parquet",
        base_metrics=f"{base}/metrics.json",
    )
    return inputs


rule evaluate_run:
    input:
        unpack(run_eval_inputs),
    output:
        predictions=f"{RESULTS}/eval/{{run}}/clean/predictions.parquet",
        metrics=f"{RESULTS}/eval/{{run}}/clean/metrics.json",
    wildcard_constraints:
        run=one_of(RUNS),
    params:
        model=lambda wc: model_source(run_of(wc).model),
        data=lambda wc, input: data_args(input),
        base=lambda wc, input: os.path.dirname(input.base_metrics),
        options=options(SC["evaluate"], EVALUATE_OPTIONS),
        rank_layer=SC["evaluate"]["rank_layer"],
        limit=f"--limit {SC['evaluate']['limit']}" if SC["evaluate"]["limit"] else "",
        judge=lambda wc: judge_args(run_of(wc).dataset),
        device=SC["device"],
        out=lambda wc, output: os.path.dirname(output.metrics),
    log:
        f"{LOGS}/evaluate/{{run}}_clean.log",
    benchmark:
        f"{BENCHMARKS}/evaluate/{{run}}_clean.tsv"
    threads: THREADS["evaluate"]
    resources:
        mem_mb=4000,
        runtime=480,
        gpu=GPU,
    conda:
        ENV
    shell:
        "python -m moir.evaluate --model {params.model} --adapter {input.adapter} --run-name {wildcards.run}"
        " --manifest {input.manifest} {params.data} --mode clean {params.options} --rank-layer {params.rank_layer}"
        " --base-eval {params.base} {params.limit} {params.judge} --device {params.device}"
        " --out-dir {params.out} 2> {log}"


def noise_eval_inputs(wildcards):
    run = run_of(wildcards)
    base = eval_dir(f"{run.dataset}__{run.model}__base", "no-image")
    clean = eval_dir(wildcards.run, "clean")
    inputs = eval_split_inputs(run.dataset, run.model, cache=False, pixels=True)
    inputs.update(
        adapter=f"{RESULTS}/runs/{wildcards.run}",
        clean_predictions=f"{clean}/predictions.parquet",
        clean_metrics=f"{clean}/metrics.json",
        vision_split=f"{base}/vision_split.parquet",
    )
    return inputs


rule evaluate_noise:
    input:
        unpack(noise_eval_inputs),
    output:
        predictions=f"{RESULTS}/eval/{{run}}/noise/predictions.parquet",
        metrics=f"{RESULTS}/eval/{{run}}/noise/metrics.json",
    wildcard_constraints:
        run=one_of(name for name, (_, evaluations) in RUNS.items() if "noise" in evaluations),
    params:
        model=lambda wc: model_source(run_of(wc).model),
        data=lambda wc, input: data_args(input),
        clean=lambda wc, input: os.path.dirname(input.clean_metrics),
        options=options(SC["evaluate"], EVALUATE_OPTIONS),
        noise_seed=SC["evaluate"]["noise_seed"],
        limit=f"--limit {SC['evaluate']['limit']}" if SC["evaluate"]["limit"] else "",
        judge=lambda wc: judge_args(run_of(wc).dataset),
        device=SC["device"],
        out=lambda wc, output: os.path.dirname(output.metrics),
    log:
        f"{LOGS}/evaluate/{{run}}_noise.log",
    benchmark:
        f"{BENCHMARKS}/evaluate/{{run}}_noise.tsv"
    threads: THREADS["evaluate"]
    resources:
        mem_mb=4000,
        runtime=480,
        gpu=GPU,
    conda:
        ENV
    shell:
        "python -m moir.evaluate --model {params.model} --adapter {input.adapter} --run-name {wildcards.run}"
        " --manifest {input.manifest} {params.data} --mode noise --noise-seed {params.noise_seed} {params.options}"
        " --clean-eval {params.clean} --vision-split {input.vision_split} {params.limit} {params.judge}"
        " --device {params.device} --out-dir {params.out} 2> {log}"
