"""Hub models, fetched once (paper suite): every model a stage loads from the Hugging Face hub (the grid's VLMs, the
ASR model, a local judge given as a hub id) is downloaded by one CPU job with internet into the shared cache
`hub.cache_dir`, its revision resolved to a commit and its files hashed into data/models/<name>.lock.json
(moir.models.fetch). Every stage that loads it takes that lock as an input and loads the locked snapshot with the
hub switched off (HF_HUB_OFFLINE=1): GPU nodes need no internet, and the token dump, training and evaluation
read the same commit. One lock per model, so that fetching one more model (a local judge) reruns nothing else.

A model that names the `encoder` of an earlier hub model (LLaVA-1.5-13B: the 7B's CLIP tower) reuses that model's
encoder caches only if the fetched tower weights are byte-identical: vision_tower_check compares them (CPU) and
the dump of its cache links the earlier cache or dumps its own (rules/encoder_cache.smk). The demo suite loads no
hub model: these rules have no jobs there.
"""


rule fetch_models:
    output:
        PLAN.lock("{name}"),
    log:
        f"{LOGS}/fetch/{{name}}.log",
    benchmark:
        f"{BENCHMARKS}/fetch/{{name}}.tsv"
    wildcard_constraints:
        name=one_of(PLAN.hub_models()),
    conda:
        ENV
    threads: 4
    resources:
        mem_mb=8000,
        runtime=240,
    params:
        settings=lambda wc: PLAN.fetch_settings(wc.name).to_json(),
        code=code("fetch"),
        cache_dir=lambda wc: PLAN.hub_cache_dir(),
    shell:
        "python -m moir.models.fetch --cache-dir {params.cache_dir:q} --lock {output:q}"
        " --settings {params.settings:q} 2> {log:q}"


rule vision_tower_check:
    input:
        lock=PLAN.lock("{model}"),
        reference_lock=lambda wc: PLAN.lock(PLAN.tower_checks()[wc.model]),
    output:
        PLAN.tower_check("{model}"),
    log:
        f"{LOGS}/fetch/vision_tower_{{model}}.log",
    benchmark:
        f"{BENCHMARKS}/fetch/vision_tower_{{model}}.tsv"
    wildcard_constraints:
        model=one_of(PLAN.tower_checks()),
    conda:
        ENV
    threads: 2
    resources:
        mem_mb=16000,
        runtime=60,
    params:
        settings=lambda wc: PLAN.tower_check_settings(wc.model).to_json(),
        code=code("towers"),
    shell:
        "python -m moir.models.towers --lock {input.lock:q} --reference-lock {input.reference_lock:q}"
        " --out {output:q} --settings {params.settings:q} 2> {log:q}"
