"""The report: Tables 1-3 (Markdown, CSV, LaTeX), the figures and report.md in results/<suite>/report/, each
registered with `report()` under one category, "Results" (tables, figures, the page), so `snakemake --report
results/<suite>/report.html` builds a self-contained HTML report whose landing page (workflow/report/workflow.rst)
links every result first. The paper suite prints the paper's published numbers (moir/reference/) beside ours.

The report reads exactly the files declared here: moir.plan.Plan.report_settings lists them (with the table layout)
in the one JSON object the stage receives.
"""


rule report:
    input:
        **PLAN.report_inputs(),
    output:
        page=report(
            f"{PLAN.report_dir()}/report.md",
            caption="../report/report.rst",
            category="Results",
            subcategory="3. All on one page",
            labels={"result": "report.md"},
        ),
        markdown=[f"{PLAN.report_dir()}/{table}.md" for table in PLAN.REPORT_TABLES],
        latex=[f"{PLAN.report_dir()}/{table}.tex" for table in PLAN.REPORT_TABLES],
        csv=[
            report(
                f"{PLAN.report_dir()}/{table}.csv",
                caption=f"../report/{table}.rst",
                category="Results",
                subcategory="1. Tables",
                labels={"result": f"{table} (CSV)"},
            )
            for table in PLAN.REPORT_TABLES
        ],
        figures=[
            report(
                f"{PLAN.report_dir()}/{figure}.png",
                caption=f"../report/{figure}.rst",
                category="Results",
                subcategory="2. Figures",
                labels={"result": figure},
            )
            for figure in PLAN.REPORT_FIGURES
        ],
        extra=PLAN.report_extra_outputs(),  # comparisons, router diagnostics, validity figure, Table 4
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
        settings=PLAN.report_settings().to_json(),
        code=code("report"),
        out=lambda wc, output: dirname(output.page),
    shell:
        "python -m moir.report --out {params.out:q} --settings {params.settings:q} 2> {log:q}"
