# Prompt learning on cached features (text tower only).


rule train_prompt:
    input:
        weights=WEIGHTS,
        features=features_path(ID_DATASET),
        fewshot=f"{R}/manifests/fewshot/shots{{shots}}_seed{{seed}}.csv",
        views=VIEWS,
    output:
        prompt=f"{R}/train/{{method}}/shots{{shots}}_seed{{seed}}/prompt.pt",
        log=f"{R}/train/{{method}}/shots{{shots}}_seed{{seed}}/train_log.csv",
    params:
        checkpoint=lambda w: f"{run_dir('train', w.method, w.shots, w.seed)}/checkpoint.pt",
        classnames=ID_CLASSNAMES,
        method=lambda w: config["methods"][w.method],
        train=config["train"],
        prompt=config["prompt"],
        backbone=config["backbone"],
    log:
        f"{R}/logs/train/{{method}}/shots{{shots}}_seed{{seed}}.log",
    benchmark:
        f"{R}/benchmarks/train/{{method}}/shots{{shots}}_seed{{seed}}.tsv"
    wildcard_constraints:
        method="|".join(TRAINED_METHODS),
    priority: chain_priority
    threads: 1
    resources:
        mem_mb=3000,
        runtime=60,
        gpu=gpu_request,
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/train_prompt.py"
