# Scores per run and dataset from cached features, then tidy metrics tables.


def prompt_input(w):
    if w.method in ZEROSHOT_METHODS:
        return []
    return f"{run_dir('train', w.method, w.shots, w.seed)}/prompt.pt"


rule score_run:
    input:
        features=[features_path(d) for d in DATASETS],
        manifests=expand(f"{R}/manifests/{{dataset}}.csv", dataset=DATASETS),
        prompt=prompt_input,
    output:
        [f"{R}/scores/{{method}}/shots{{shots}}_seed{{seed}}/{d}.parquet" for d in DATASETS],
    log:
        f"{R}/logs/score/{{method}}/shots{{shots}}_seed{{seed}}.log",
    benchmark:
        f"{R}/benchmarks/score/{{method}}/shots{{shots}}_seed{{seed}}.tsv"
    threads: 1
    resources:
        mem_mb=3000,
        runtime=30,
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
