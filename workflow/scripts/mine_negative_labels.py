"""Mine NegLabel's negative labels from WordNet for the ID label set (once per backbone and label set)."""
import torch

from deltaenergy.backbones import build_backbone
from deltaenergy.logs import log_to
from deltaenergy.neglabel import mine_negative_labels, save_negative_labels, wordnet_lemmas

with log_to(snakemake.log[0]):
    torch.set_num_threads(snakemake.threads)
    params = snakemake.params
    cfg = params.neglabel
    device = "cuda" if torch.cuda.is_available() else "cpu"  # the job's GPU when one is visible
    backbone = build_backbone(params.backbone["name"], **params.backbone["options"]).to(device)
    words = wordnet_lemmas(exclude=params.classnames)
    chosen, feats = mine_negative_labels(backbone, params.classnames, words, template=cfg["template"],
                                         percentile=cfg["percentile"], pct_neg=cfg["pct_neg"],
                                         max_candidates=cfg["max_candidates"], seed=cfg["seed"])
    meta = {"backbone": backbone.cache_key(), "template": cfg["template"], "percentile": cfg["percentile"],
            "pct_neg": cfg["pct_neg"], "n_candidates": cfg["max_candidates"] or sum(map(len, words.values())),
            "id_classnames": params.classnames, "seed": cfg["seed"]}
    save_negative_labels(snakemake.output.labels, chosen, feats, meta)
    print(f"{len(chosen)} negative labels; farthest: {chosen[:10]}")
