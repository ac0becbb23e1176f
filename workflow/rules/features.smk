# Features: the image tower runs once per image; everything downstream reads these files.


rule extract_features:
    input:
        manifest=f"{R}/manifests/{{dataset}}.csv",
        images=f"{R}/data/{{dataset}}",
    output:
        features=f"{R}/features/{BACKBONE}/{{dataset}}.npz",
        meta=f"{R}/features/{BACKBONE}/{{dataset}}.npz.json",
    params:
        backbone=config["backbone"],
        batch_size=config["features"]["batch_size"],
    log:
        f"{R}/logs/extract_features/{{dataset}}.log",
    benchmark:
        f"{R}/benchmarks/extract_features/{{dataset}}.tsv"
    # One thread: on the demo's 2 cores two single-threaded jobs beat one two-threaded job, whose second
    # torch thread spin-waits (fashion_mnist: 104 CPU-s at 2 threads on busy cores vs 68 measured before).
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
        gpu=gpu_request,
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/extract_features.py"


rule extract_views:
    input:
        manifest=f"{R}/manifests/{ID_DATASET}.csv",
        images=f"{R}/data/{ID_DATASET}",
    output:
        features=VIEWS_PATH,
        meta=f"{VIEWS_PATH}.json",
    params:
        backbone=config["backbone"],
        batch_size=config["features"]["batch_size"],
        views=config["features"]["views"],
        scale=config["features"]["view_crop_scale"],
        data_seed=config["data"]["seed"],
    log:
        f"{R}/logs/extract_features/{ID_DATASET}_views.log",
    benchmark:
        f"{R}/benchmarks/extract_features/{ID_DATASET}_views.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
        gpu=gpu_request,
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/extract_features.py"
