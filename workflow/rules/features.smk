# Features: the image tower runs once per image; everything downstream reads these files.


# open_clip weights named by a pretrained tag are downloaded once, on the machine running Snakemake (compute
# nodes may have no internet), into open_clip's cache; every job building the backbone waits for them.
localrules:
    fetch_weights,


rule fetch_weights:
    output:
        "resources/weights/{arch}/{tag}.json",
    params:
        cache_dir=config["backbone"]["options"].get("cache_dir"),
    log:
        "resources/weights/logs/{arch}_{tag}.log",
    benchmark:
        "resources/weights/benchmarks/{arch}_{tag}.tsv"
    resources:
        mem_mb=1000,
        runtime=60,
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/fetch_weights.py"


rule extract_features:
    input:
        manifest=f"{R}/manifests/{{dataset}}.csv",
        images=lambda w: dataset_dirs([w.dataset]),
        weights=WEIGHTS,
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
    priority: DATA_PRIORITY
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
        images=dataset_dirs([ID_DATASET]),
        weights=WEIGHTS,
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
    priority: DATA_PRIORITY
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
        gpu=gpu_request,
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/extract_features.py"
