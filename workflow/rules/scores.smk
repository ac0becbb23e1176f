# Scores per run and dataset from cached features, then tidy metrics tables.


NEGLABEL_SCORES = [c for c, spec in config["scores"].items() if spec["score"] == "neglabel"]


rule mine_negative_labels:
    input:
        weights=WEIGHTS,
        wordnet=source_markers(["wordnet"]),
    output:
        labels=f"{R}/neglabels/{BACKBONE}/{ID_DATASET}.npz",
        meta=f"{R}/neglabels/{BACKBONE}/{ID_DATASET}.json",
    params:
        neglabel=config["neglabel"],
        backbone=config["backbone"],
        classnames=ID_CLASSNAMES,
    log:
        f"{R}/logs/mine_negative_labels.log",
    benchmark:
        f"{R}/benchmarks/mine_negative_labels.tsv"
    priority: DATA_PRIORITY
    threads: 1
    resources:
        mem_mb=3000,
        runtime=60,
        gpu=gpu_request,
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/mine_negative_labels.py"


rule score_run:
    input:
        weights=WEIGHTS,
        features=[features_path(d) for d in DATASETS],
        manifests=expand(f"{R}/manifests/{{dataset}}.csv", dataset=DATASETS),
        prompt=prompt_input,
        neglabels=rules.mine_negative_labels.output.labels if NEGLABEL_SCORES else [],
    output:
        tables=[f"{R}/scores/{{method}}/shots{{shots}}_seed{{seed}}/{d}.parquet" for d in DATASETS],
        # The run's ΔEnergy c sweep from the same similarities (rule c_sweep gathers the runs it shows):
        # CoCoOp's per-image text forwards then run once per run, not again for the ablation.
        c_sweep=f"{R}/ablations/c_sweep/{{method}}/shots{{shots}}_seed{{seed}}.csv",
    params:
        classnames=ID_CLASSNAMES,
        method=lambda w: config["methods"].get(w.method),
        scores=config["scores"],
        c_sweep={
            "c": config["ablations"]["c_sweep"]["c"],
            "score": config["scores"][config["ablations"]["c_sweep"]["score"]],
        },
        class_subsets=CLASS_SUBSETS,
        zeroshot=config["zeroshot"],
        prompt=config["prompt"],
        backbone=config["backbone"],
    log:
        f"{R}/logs/score/{{method}}/shots{{shots}}_seed{{seed}}.log",
    benchmark:
        f"{R}/benchmarks/score/{{method}}/shots{{shots}}_seed{{seed}}.tsv"
    priority: chain_priority
    threads: 1
    resources:
        mem_mb=3000,
        runtime=30,
        gpu=gpu_request,
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/score_run.py"


rule metrics:
    input:
        [f"{run_dir('scores', m, k, s)}/{d}.parquet" for m, k, s in RUNS for d in DATASETS],
    output:
        detection=f"{R}/metrics/detection.csv",
        accuracy=f"{R}/metrics/accuracy.csv",
    params:
        scores=list(config["scores"]),
    log:
        f"{R}/logs/metrics.log",
    benchmark:
        f"{R}/benchmarks/metrics.tsv"
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/metrics.py"
