"""The report: Tables 1-3 (Markdown, CSV, LaTeX), the figures and report.md in results/<suite>/report/, each
registered with `report()`, so `snakemake --report results/<suite>/report.html` builds a self-contained HTML
report. The paper suite prints the paper's published numbers (moir/reference/) beside ours.
"""


rule report:
    input:
        unpack(report_inputs),
    output:
        page=report(f"{RESULTS}/report/report.md", caption="../report/report.rst", category="Report"),
        markdown=expand(f"{RESULTS}/report/{{table}}.md", table=REPORT_TABLES),
        latex=expand(f"{RESULTS}/report/{{table}}.tex", table=REPORT_TABLES),
        csv=[
            report(f"{RESULTS}/report/{table}.csv", caption=f"../report/{table}.rst", category="Tables")
            for table in REPORT_TABLES
        ],
        figures=[
            report(f"{RESULTS}/report/{figure}.png", caption=f"../report/{figure}.rst", category="Figures")
            for figure in REPORT_FIGURES
        ],
    log:
        f"{LOGS}/report/report.log",
    benchmark:
        f"{BENCHMARKS}/report/report.tsv"
    conda:
        ENV
    threads: THREADS["report"]
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        layout=report_args(),
        results=lambda wc, output: os.path.dirname(os.path.dirname(output.page)),
        out=lambda wc, output: os.path.dirname(output.page),
    shell:
        "python -m moir.report --results {params.results} --out {params.out} {params.layout} 2> {log}"
