"""The report: Tables 1-3 (Markdown, CSV, LaTeX) and the figures, in results/<suite>/report/, each registered with
`report()` so that `snakemake --report results/<suite>/report.html` builds a self-contained HTML report.
The paper suite prints the paper's published numbers (moir/reference/) beside ours.
"""

REPORT = f"{RESULTS}/report"
REFERENCE = {
    "tables": "moir/reference/paper_tables.csv",
    "robustness": "moir/reference/paper_robustness.csv",
}
TABLES = ("table1", "table2", "table3")
FIGURES = ("mdi_aei", "accuracy_rank", "ablation", "gates", "robustness")


def report_inputs(wildcards):
    inputs = {
        "metrics": [
            f"{RESULTS}/eval/{name}/{evaluation}/metrics.json"
            for name, (_, evaluations) in RUNS.items()
            for evaluation in evaluations
        ],
        "runs": [f"{RESULTS}/runs/{name}" for name, (run, _) in RUNS.items() if run.method == "moir"],
        "code": moir_sources("moir.report"),
    }
    if SUITE == "paper":
        inputs.update(REFERENCE)
    return inputs


def report_args():
    """The table layout of config.yaml as moir.report's arguments (one canonical string)."""
    t1, t2, t3 = SC["table1"], SC["table2"], SC["table3"]
    args = [
        "--table1 " + " ".join(f"{pair['dataset']}:{pair['model']}" for pair in t1["pairs"]),
        "--placements " + " ".join(t1["placements"]),
        f"--ratio {t1['ratio']}",
        f"--table2 {t2['dataset']}:{t2['model']}:{t2['placement']}",
        f"--table3 {t3['dataset']}:{t3['model']}:{t3['placement']}",
        "--ratios " + " ".join(str(ratio) for ratio in t3["ratios"]),
        "--seeds " + " ".join(str(seed) for seed in SEEDS),
        "--modality " + " ".join(f"{name}={spec['modality']}" for name, spec in sorted(SC["datasets"].items())),
    ]
    if SUITE == "paper":
        args.append(f"--reference-tables {REFERENCE['tables']} --reference-robustness {REFERENCE['robustness']}")
    return " ".join(args)


rule report:
    input:
        unpack(report_inputs),
    output:
        markdown=report(
            f"{REPORT}/report.md",
            caption="../report/report.rst",
            category="Report",
        ),
        tables=expand(f"{REPORT}/{{table}}.{{suffix}}", table=TABLES, suffix=("md", "tex")),
        csv=[
            report(f"{REPORT}/{table}.csv", caption=f"../report/{table}.rst", category="Tables")
            for table in TABLES
        ],
        figures=[
            report(f"{REPORT}/{figure}.png", caption=f"../report/{figure}.rst", category="Figures")
            for figure in FIGURES
        ],
    params:
        results=RESULTS,
        out=REPORT,
        layout=report_args(),
    log:
        f"{LOGS}/report/report.log",
    benchmark:
        f"{BENCHMARKS}/report/report.tsv"
    threads: THREADS["report"]
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        ENV
    shell:
        "python -m moir.report --results {params.results} --out {params.out} {params.layout} 2> {log}"
