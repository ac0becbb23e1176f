# Diagnostics (the paper's figures) and ablations: data rules over cached features and trained prompts,
# then one papermill notebook -> HTML (+ its figure PNG) per figure. Settings: `diagnostics:` and
# `ablations:` in the config (validated at DAG construction: untrained methods, unlabelled domains).
import os
import re

from deltaenergy.config import ebm_grid_variants

DIAG = config["diagnostics"]
ABL = config["ablations"]
DIAG_SHOTS = DIAG["shots"]
HESSIAN = DIAG["hessian"]
EBM_GRID = ebm_grid_variants(config)
# Each diagnostic report: its caption on index.html and the caption of its figure (reports/figures/<name>.png).
DIAGNOSTIC_REPORTS = {
    "energy_change": (
        "Fig. 1A: ΔEnergy distributions of ID, covariate-shifted and semantic-OOD sets, zero-shot vs tuned, "
        "with the overlap coefficient against ID.",
        "ΔEnergy densities per dataset, zero-shot vs each tuned method.",
    ),
    "masking_zeroshot": (
        "Fig. 3: how often masking the image feature (keep-positive / keep-negative) changes the zero-shot "
        "prediction, closed-set vs open-set data.",
        "Prediction-change rate under masking per dataset, 95% bootstrap CI.",
    ),
    "hessian_consistency": (
        "Fig. 1B: Hessian cosine / distance between ID and masked ID and each covariate set, beside that "
        "set's accuracy; correlation across methods and seeds.",
        "Hessian cosine (ID vs covariate set) against accuracy on the set, per method and seed.",
    ),
    "radar": (
        "Fig. 1C: every method on min-max normalised detection and generalization axes.",
        "Radar of normalised ID accuracy, covariate accuracy, AUROC and 1 − FPR95.",
    ),
    "ablation_c_sweep": (
        "Ablation: ΔEnergy's c (top-c similarities reset), AUROC / FPR95 per c (descriptive; no c is chosen).",
        "AUROC of ΔE_c against c per method, mean ± std over seeds.",
    ),
    "fewshot_curves": (
        "Ablation: shots vs ID accuracy, covariate accuracy and AUROC per method.",
        "Few-shot curves, mean ± std over seeds.",
    ),
}
if EBM_GRID:
    DIAGNOSTIC_REPORTS["ablation_ebm_grid"] = (
        "Ablation: EBM λ × mask_mode × anchor, chosen on ID validation accuracy (test sets shown, not used).",
        "ID validation accuracy per EBM grid point (± binomial SE); test AUROC beside it.",
    )
DIAG_RUNS = [(m, DIAG_SHOTS, s) for m in TRAINED_METHODS for s in METHOD_SEEDS[m]]
HESSIAN_RUNS = [(m, DIAG_SHOTS, s) for m in HESSIAN["methods"] for s in HESSIAN["seeds"]]
C_SWEEP_RUNS = [
    (m, 0, 0) if m in ZEROSHOT_METHODS else (m, DIAG_SHOTS, s)
    for m in ABL["c_sweep"]["methods"]
    for s in ([0] if m in ZEROSHOT_METHODS else METHOD_SEEDS[m])
]
C_SWEEP_RUNS = list(dict.fromkeys(C_SWEEP_RUNS))


rule masking_zeroshot_data:
    input:
        weights=WEIGHTS,
        features=[features_path(d) for d in DATASETS],
        manifests=expand(f"{R}/manifests/{{dataset}}.csv", dataset=DATASETS),
    output:
        f"{R}/diagnostics/masking_zeroshot.parquet",
    params:
        classnames=ID_CLASSNAMES,
        zeroshot=config["zeroshot"],
        masking=DIAG["masking"],
        backbone=config["backbone"],
    log:
        f"{R}/logs/diagnostics/masking_zeroshot_data.log",
    benchmark:
        f"{R}/benchmarks/diagnostics/masking_zeroshot_data.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/masking_zeroshot.py"


rule hessian_prompt:
    input:
        weights=WEIGHTS,
        prompt=f"{R}/train/{{method}}/shots{{shots}}_seed{{seed}}/prompt.pt",
        id_features=features_path(ID_DATASET),
        id_manifest=f"{R}/manifests/{ID_DATASET}.csv",
        features=[features_path(d) for d in HESSIAN["domains"]],
        manifests=expand(f"{R}/manifests/{{dataset}}.csv", dataset=HESSIAN["domains"]),
    output:
        csv=f"{R}/diagnostics/hessian/{{method}}/shots{{shots}}_seed{{seed}}.csv",
        json=f"{R}/diagnostics/hessian/{{method}}/shots{{shots}}_seed{{seed}}.json",
    params:
        domains=HESSIAN["domains"],
        hessian=HESSIAN,
        tau=config["train"]["tau"],
        classnames=ID_CLASSNAMES,
        method=lambda w: config["methods"][w.method],
        prompt=config["prompt"],
        backbone=config["backbone"],
    log:
        f"{R}/logs/diagnostics/hessian/{{method}}/shots{{shots}}_seed{{seed}}.log",
    benchmark:
        f"{R}/benchmarks/diagnostics/hessian/{{method}}/shots{{shots}}_seed{{seed}}.tsv"
    wildcard_constraints:
        method="|".join(HESSIAN["methods"]),
    # One thread: on 2 busy cores a second torch thread mostly spin-waits (measured 5x the CPU time).
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
        gpu=1,
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/hessian_prompt.py"


rule c_sweep:
    input:
        sweeps=[f"{R}/ablations/c_sweep/{m}/shots{k}_seed{s}.csv" for m, k, s in C_SWEEP_RUNS],
    output:
        f"{R}/ablations/c_sweep.csv",
    params:
        runs=C_SWEEP_RUNS,
    log:
        f"{R}/logs/ablations/c_sweep.log",
    benchmark:
        f"{R}/benchmarks/ablations/c_sweep.tsv"
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/c_sweep.py"


# The EBM grid reuses the training and scoring scripts; `method` is the variant's name here.
rule train_ablation:
    input:
        weights=WEIGHTS,
        features=features_path(ID_DATASET),
        fewshot=f"{R}/manifests/fewshot/shots{{shots}}_seed{{seed}}.csv",
        views=VIEWS,
    output:
        prompt=f"{R}/ablations/train/{{method}}/shots{{shots}}_seed{{seed}}/prompt.pt",
        log=f"{R}/ablations/train/{{method}}/shots{{shots}}_seed{{seed}}/train_log.csv",
    params:
        checkpoint=lambda w: f"{R}/ablations/train/{w.method}/shots{w.shots}_seed{w.seed}/checkpoint.pt",
        classnames=ID_CLASSNAMES,
        method=lambda w: EBM_GRID[w.method],
        train=config["train"],
        prompt=config["prompt"],
        backbone=config["backbone"],
    log:
        f"{R}/logs/ablations/train/{{method}}/shots{{shots}}_seed{{seed}}.log",
    benchmark:
        f"{R}/benchmarks/ablations/train/{{method}}/shots{{shots}}_seed{{seed}}.tsv"
    wildcard_constraints:
        method="|".join(map(re.escape, EBM_GRID)) or "^$",
    threads: 1
    resources:
        mem_mb=3000,
        runtime=60,
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/train_prompt.py"


rule score_ablation:
    input:
        weights=WEIGHTS,
        features=[features_path(d) for d in DATASETS],
        manifests=expand(f"{R}/manifests/{{dataset}}.csv", dataset=DATASETS),
        prompt=f"{R}/ablations/train/{{method}}/shots{{shots}}_seed{{seed}}/prompt.pt",
        neglabels=rules.mine_negative_labels.output.labels if NEGLABEL_SCORES else [],
    output:
        tables=[f"{R}/ablations/scores/{{method}}/shots{{shots}}_seed{{seed}}/{d}.parquet" for d in DATASETS],
    params:
        classnames=ID_CLASSNAMES,
        method=lambda w: EBM_GRID[w.method],
        scores=config["scores"],
        class_subsets=CLASS_SUBSETS,
        zeroshot=config["zeroshot"],
        prompt=config["prompt"],
        backbone=config["backbone"],
    log:
        f"{R}/logs/ablations/score/{{method}}/shots{{shots}}_seed{{seed}}.log",
    benchmark:
        f"{R}/benchmarks/ablations/score/{{method}}/shots{{shots}}_seed{{seed}}.tsv"
    wildcard_constraints:
        method="|".join(map(re.escape, EBM_GRID)) or "^$",
    threads: 1
    resources:
        mem_mb=3000,
        runtime=30,
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/score_run.py"


rule energy_change:
    input:
        notebook=f"{workflow.basedir}/notebooks/energy_change.ipynb",
        scores=score_paths([("zeroshot", 0, 0), *DIAG_RUNS]),
    output:
        notebook=f"{R}/reports/notebooks/energy_change.ipynb",
        html=notebook_html("energy_change"),
        figure=figure("energy_change", "Fig. 1A"),
    params:
        nb=lambda w, input, output: nb_params(
            output, score_files=list(input.scores), score=DIAG["energy_change"]["score"]
        ),
    log:
        f"{R}/logs/reports/energy_change.log",
    benchmark:
        f"{R}/benchmarks/reports/energy_change.tsv"
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/report.yaml"
    shell:
        NOTEBOOK_SHELL


rule masking_zeroshot:
    input:
        notebook=f"{workflow.basedir}/notebooks/masking_zeroshot.ipynb",
        data=rules.masking_zeroshot_data.output[0],
    output:
        notebook=f"{R}/reports/notebooks/masking_zeroshot.ipynb",
        html=notebook_html("masking_zeroshot"),
        figure=figure("masking_zeroshot", "Fig. 3"),
    params:
        nb=lambda w, input, output: nb_params(output, data=input.data, tau=DIAG["masking"]["tau"]),
    log:
        f"{R}/logs/reports/masking_zeroshot.log",
    benchmark:
        f"{R}/benchmarks/reports/masking_zeroshot.tsv"
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/report.yaml"
    shell:
        NOTEBOOK_SHELL


rule hessian_consistency:
    input:
        notebook=f"{workflow.basedir}/notebooks/hessian_consistency.ipynb",
        hessian=[f"{R}/diagnostics/hessian/{m}/shots{k}_seed{s}.csv" for m, k, s in HESSIAN_RUNS],
        accuracy=f"{R}/metrics/accuracy.csv",
    output:
        notebook=f"{R}/reports/notebooks/hessian_consistency.ipynb",
        html=notebook_html("hessian_consistency"),
        figure=figure("hessian_consistency", "Fig. 1B"),
    params:
        nb=lambda w, input, output: nb_params(output, hessian_files=list(input.hessian)),
    log:
        f"{R}/logs/reports/hessian_consistency.log",
    benchmark:
        f"{R}/benchmarks/reports/hessian_consistency.tsv"
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/report.yaml"
    shell:
        NOTEBOOK_SHELL


rule radar:
    input:
        notebook=f"{workflow.basedir}/notebooks/radar.ipynb",
        detection=f"{R}/metrics/detection.csv",
        accuracy=f"{R}/metrics/accuracy.csv",
    output:
        notebook=f"{R}/reports/notebooks/radar.ipynb",
        html=notebook_html("radar"),
        figure=figure("radar", "Fig. 1C"),
    params:
        nb=lambda w, output: nb_params(output, score=DIAG["radar"]["score"], shots=DIAG_SHOTS),
    log:
        f"{R}/logs/reports/radar.log",
    benchmark:
        f"{R}/benchmarks/reports/radar.tsv"
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/report.yaml"
    shell:
        NOTEBOOK_SHELL


rule fewshot_curves:
    input:
        notebook=f"{workflow.basedir}/notebooks/fewshot_curves.ipynb",
        detection=f"{R}/metrics/detection.csv",
        accuracy=f"{R}/metrics/accuracy.csv",
    output:
        notebook=f"{R}/reports/notebooks/fewshot_curves.ipynb",
        html=notebook_html("fewshot_curves"),
        figure=figure("fewshot_curves", "few-shot"),
    params:
        nb=lambda w, output: nb_params(output, score=DIAG["radar"]["score"]),
    log:
        f"{R}/logs/reports/fewshot_curves.log",
    benchmark:
        f"{R}/benchmarks/reports/fewshot_curves.tsv"
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/report.yaml"
    shell:
        NOTEBOOK_SHELL


rule ablation_c_sweep:
    input:
        notebook=f"{workflow.basedir}/notebooks/ablation_c_sweep.ipynb",
        sweep=rules.c_sweep.output[0],
    output:
        notebook=f"{R}/reports/notebooks/ablation_c_sweep.ipynb",
        html=notebook_html("ablation_c_sweep"),
        figure=figure("ablation_c_sweep", "ablation c"),
    params:
        nb=lambda w, input, output: nb_params(
            output, sweep=input.sweep, configured_c=config["scores"][ABL["c_sweep"]["score"]]["c"]
        ),
    log:
        f"{R}/logs/reports/ablation_c_sweep.log",
    benchmark:
        f"{R}/benchmarks/reports/ablation_c_sweep.tsv"
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/report.yaml"
    shell:
        NOTEBOOK_SHELL


if EBM_GRID:
    GRID = ABL["ebm_grid"]
    GRID_BASELINES = [(m, GRID["shots"], GRID["seed"]) for m in TRAINED_METHODS]

    rule ablation_ebm_grid:
        input:
            notebook=f"{workflow.basedir}/notebooks/ablation_ebm_grid.ipynb",
            variants=score_paths([(v, GRID["shots"], GRID["seed"]) for v in EBM_GRID], root="ablations/scores"),
            baselines=score_paths(GRID_BASELINES),
        output:
            notebook=f"{R}/reports/notebooks/ablation_ebm_grid.ipynb",
            html=notebook_html("ablation_ebm_grid"),
            figure=figure("ablation_ebm_grid", "ablation EBM"),
        params:
            nb=lambda w, input, output: nb_params(
                output,
                variant_files=list(input.variants),
                baseline_files=list(input.baselines),
                variants=EBM_GRID,
                base=GRID["base"],
                base_spec=config["methods"][GRID["base"]],
                score=DIAG["radar"]["score"],
            ),
        log:
            f"{R}/logs/reports/ablation_ebm_grid.log",
        benchmark:
            f"{R}/benchmarks/reports/ablation_ebm_grid.tsv"
        resources:
            mem_mb=2000,
            runtime=10,
        conda:
            "../envs/report.yaml"
        shell:
            NOTEBOOK_SHELL
