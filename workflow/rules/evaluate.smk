"""Evaluations (moir.evaluate) on each dataset's eval split, into results/<suite>/eval/<name>/<mode>/:

    <dataset>__<model>__base/clean     the base model: the effective ranks every run's rank deltas subtract
    <dataset>__<model>__base/no-image  the base model without media: the shared vision-dependent/irrelevant split
    <run>/clean                        accuracy, MDI/AEI, effective ranks and their deltas against the base
    <run>/noise                        (Table 2's runs) every image or frame replaced by noise: unchanged answers

One rule for the clean and noise evaluations of runs and base models (the wildcard `evaluation` is
"<name>/<mode>", one of the plan's), one for the no-image evaluation, which also writes the vision split.
metrics.json is written last; an interrupted evaluation resumes from its predictions.parts/ (not a declared
output, so Snakemake keeps it).
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
        evaluation=one_of(key for key, ev in PLAN.evaluations.items() if ev.mode != NO_IMAGE),
    conda:
        ENV
    threads: THREADS["evaluate"]
    resources:
        mem_mb=4000,
        runtime=480,
        gpu=GPU,
    params:
        settings=lambda wc: PLAN.evaluate_settings(wc.evaluation).to_json(),
        code=evaluate_code,
        paths=evaluate_paths,
        out=lambda wc, output: dirname(output.metrics),
    shell:
        "python -m moir.evaluate {params.paths:q} --out-dir {params.out:q} --settings {params.settings:q} 2> {log:q}"


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
        mem_mb=4000,
        runtime=480,
        gpu=GPU,
    params:
        settings=lambda wc: PLAN.evaluate_settings(f"{wc.base}/{NO_IMAGE}").to_json(),
        code=code("evaluate"),
        paths=evaluate_paths,
        out=lambda wc, output: dirname(output.metrics),
    shell:
        "python -m moir.evaluate {params.paths:q} --out-dir {params.out:q} --settings {params.settings:q} 2> {log:q}"
