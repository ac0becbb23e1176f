# Reports: papermill notebooks -> HTML, provenance, and the index page linking them.

REPORTS = {
    "detection_table": "OOD detection: AUROC and FPR95 per method, score and OOD set (mean ± std over seeds).",
    "generalization_table": "OOD generalization: accuracy on the ID test set and each covariate-shifted set.",
}


rule provenance:
    input:
        manifests=expand(f"{R}/manifests/{{dataset}}.csv", dataset=DATASETS),
        sidecars=expand(f"{R}/manifests/{{dataset}}.csv.json", dataset=DATASETS),
        features=[f"{p}.json" for p in [*map(features_path, DATASETS), *VIEWS]],
        data=dataset_dirs(DATASETS),
        classes=CLASSES_JSON,
    output:
        f"{R}/provenance.json",
    log:
        f"{R}/logs/provenance.log",
    benchmark:
        f"{R}/benchmarks/provenance.tsv"
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/provenance.py"


rule report_notebook:
    input:
        notebook=f"{workflow.basedir}/notebooks/{{report}}.ipynb",
        detection=f"{R}/metrics/detection.csv",
        accuracy=f"{R}/metrics/accuracy.csv",
    output:
        notebook=f"{R}/reports/notebooks/{{report}}.ipynb",
        html=report(f"{R}/reports/{{report}}.html", category="Tables", labels={"report": "{report}"}),
    params:
        nb=lambda w, input: json.dumps({"results_dir": str(Path(input.detection).parents[1])}),
    log:
        f"{R}/logs/reports/{{report}}.log",
    benchmark:
        f"{R}/benchmarks/reports/{{report}}.tsv"
    wildcard_constraints:
        report="|".join(REPORTS),
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/report.yaml"
    shell:
        NOTEBOOK_SHELL


rule index:
    input:
        reports=expand(f"{R}/reports/{{report}}.html", report=[*REPORTS, *DIAGNOSTIC_REPORTS]),
        figures=expand(f"{R}/reports/figures/{{report}}.png", report=DIAGNOSTIC_REPORTS),
        provenance=f"{R}/provenance.json",
    output:
        report(f"{R}/reports/index.html", category="Reports", labels={"report": "index"}),
    params:
        captions={**REPORTS, **{name: report for name, (report, _) in DIAGNOSTIC_REPORTS.items()}},
        figures={f"figures/{name}.png": figure for name, (_, figure) in DIAGNOSTIC_REPORTS.items()},
    log:
        f"{R}/logs/reports/index.log",
    benchmark:
        f"{R}/benchmarks/reports/index.tsv"
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        "../envs/report.yaml"
    script:
        "../scripts/index.py"


# What `snakemake` builds (rule all in the Snakefile): the index and every report it links.
TARGETS = [f"{R}/reports/index.html", *expand(f"{R}/reports/{{report}}.html", report=DIAGNOSTIC_REPORTS)]
