"""Prompt-learning step time: our trainer's step vs a CoOp-style reference on the same random-init CLIP.

Usage: python benchmarks/bench_train.py [--k 10 100 1000] [--repeats 3] [--threads 2] [--arch ViT-B-16]

Both sides train a generic CoOp context (``--n-ctx`` vectors before the class name, seeded N(0, 0.02²))
on one batch of ``--batch`` images (seeded noise at the model's input size) with labels ``i mod K``,
classes = the first K ImageNet class names, CE of cosine logits / tau (tau 0.01), SGD (lr 0.002, momentum
0.9, weight decay 5e-4). Every timed step starts from the same context with a fresh optimizer, so all
repeats time the same (first) step:
- ours: ``deltaenergy.methods.train.train_step`` (the trainer's own step) of a ``PromptLearner`` on the
  batch's image features, encoded once before timing (the study caches them).
- reference (:class:`CoOpReference`, CoOp/Dassl-style, written here): each step encodes the batch with
  the frozen image encoder, then runs all K prompts ``[SOT] ctx name . [EOT]`` padded to the 77-token
  context through the whole text transformer in float32 and pools at the EOT (the argmax of the ids).
The loss and the context gradient of the two must agree (relative difference below ``--tolerance``,
1e-5); otherwise the run fails. FLOPs per step come from ``torch.utils.flop_counter`` (matmuls and
attention; the reference's are counted for one image and two prompts and scaled, as they are linear in
B and K). Above ``--ref-chunk`` classes the reference's one K·77-position graph does not fit in memory
(~35 GB at K=1000): it then computes the same gradient in chunks of classes after a no-grad pass over
all classes; that pass is timed and subtracted, so the reported reference time is the one-graph step's
work (image encoder, one text forward with graph, one backward, SGD). Writes
benchmarks/results/train-<host>-<date>.json (unless called by run.py).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from common import RESULTS, machine, random_clip, save_result, stats
from deltaenergy.methods.train import train_step
from deltaenergy.prompts import PromptLearner

TAU = 0.01
SGD = {"lr": 0.002, "momentum": 0.9, "weight_decay": 5e-4}
METHOD = {"kind": "coop"}


class CoOpReference(torch.nn.Module):
    """CoOp's prompt learner and step (Zhou et al. 2022, Dassl trainer), on an open_clip ``CLIP`` model.

    ``ctx`` ``[n, W]`` is shared by all classes; the prompt of class k is the token embeddings of
    "X .. X {name}." (n placeholders) at the full context length with the placeholders' rows replaced by
    ``ctx`` (CoOp's ``token_prefix`` / ``token_suffix`` buffers). ``step`` encodes the images with the
    frozen image encoder, runs the whole text transformer over all K·77 positions and takes one SGD step.
    """

    def __init__(self, model: torch.nn.Module, tokenizer, classnames: list[str], ctx: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        n_ctx = ctx.shape[0]
        ids = tokenizer([" ".join(["X"] * n_ctx) + f" {name}." for name in classnames])
        with torch.no_grad():
            embeds = model.token_embedding(ids)
        self.register_buffer("ids", ids)
        self.register_buffer("token_prefix", embeds[:, :1].clone())  # SOT
        self.register_buffer("token_suffix", embeds[:, 1 + n_ctx :].clone())  # class name, ".", EOT, padding
        self.ctx = torch.nn.Parameter(ctx.detach().clone())

    def text_features(self, classes: range | None = None) -> torch.Tensor:
        """Normalised text features ``[K, D]`` of all (or ``classes``) classes: the full 77-token causal
        text transformer (CoOp's ``TextEncoder``)."""
        m, rows = self.model, slice(None) if classes is None else slice(classes.start, classes.stop)
        ids, prefix, suffix = self.ids[rows], self.token_prefix[rows], self.token_suffix[rows]
        x = torch.cat([prefix, self.ctx.expand(ids.shape[0], -1, -1), suffix], dim=1)
        x = m.transformer(x + m.positional_embedding, attn_mask=m.attn_mask)
        x = m.ln_final(x)[torch.arange(ids.shape[0], device=ids.device), ids.argmax(dim=-1)] @ m.text_projection
        return F.normalize(x, dim=-1)

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return F.normalize(self.model.encode_image(images), dim=-1)

    def text_step(self, feats: torch.Tensor, labels: torch.Tensor, optimizer: torch.optim.Optimizer,
                  chunk: int = 0) -> tuple[float, float]:
        """Text forward, CE, backward, SGD step; returns (loss, seconds of the extra no-grad pass).

        With ``0 < chunk < K`` (memory: the K·77-position graph of K=1000 needs ~35 GB in float32) the
        same gradient comes from two passes: all text features without a graph, the loss and its gradient
        G with respect to them, then per chunk of classes a forward with a graph and ``backward(G_chunk)``.
        The first (no-grad) pass is extra work a one-graph step does not do; its seconds are returned.
        """
        optimizer.zero_grad(set_to_none=True)
        n_cls = self.ids.shape[0]
        if not 0 < chunk < n_cls:
            loss = F.cross_entropy(feats @ self.text_features().T / TAU, labels)
            loss.backward()
            optimizer.step()
            return loss.item(), 0.0
        parts = [range(i, min(i + chunk, n_cls)) for i in range(0, n_cls, chunk)]
        start = time.perf_counter()
        with torch.no_grad():
            text = torch.cat([self.text_features(part) for part in parts])
        extra = time.perf_counter() - start
        text.requires_grad_(True)
        loss = F.cross_entropy(feats @ text.T / TAU, labels)
        loss.backward()
        for part in parts:
            self.text_features(part).backward(text.grad[part.start : part.stop])
        optimizer.step()
        return loss.item(), extra

    def step(self, images: torch.Tensor, labels: torch.Tensor, optimizer: torch.optim.Optimizer) -> float:
        """One CoOp training step on a batch of images: image encoder, text encoder, CE, SGD; the loss."""
        return self.text_step(self.image_features(images), labels, optimizer)[0]


def count_flops(fn) -> int:
    """Floating-point operations of one call of ``fn`` (torch's flop counter: matmuls, convolutions,
    attention). ``nn.MultiheadAttention``'s fused inference path, whose projections the counter does
    not see, is switched off while counting."""
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with FlopCounterMode(display=False) as counter:
            fn()
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return int(counter.get_total_flops())


def restart(module: torch.nn.Module, ctx0: torch.Tensor) -> torch.optim.Optimizer:
    """Reset the learned context to ``ctx0``; a fresh optimizer for it (every repeat is the first step)."""
    with torch.no_grad():
        module.ctx.copy_(ctx0)
    module.ctx.grad = None
    return torch.optim.SGD([module.ctx], **SGD)


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def bench_k(model, backbone, n_cls: int, args, images: torch.Tensor, ref_repeats: int) -> dict:
    """Time ours and the reference at K = ``n_cls``; check equal loss and gradient."""
    device = images.device
    names = open_clip.IMAGENET_CLASSNAMES[:n_cls]
    labels = torch.arange(images.shape[0], device=device) % n_cls
    learner = PromptLearner(backbone, names, n_ctx=args.n_ctx, generator=torch.Generator().manual_seed(args.seed))
    learner.to(device)
    step_learner = torch.compile(learner) if args.compile else learner  # attributes pass through
    ctx0 = learner.ctx.detach().clone()
    reference = CoOpReference(model, open_clip.get_tokenizer(backbone.arch), names, ctx0).to(device)
    feats = backbone.encode_images(images)[0]  # the study's cached features: encoded once, not timed
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def ours():
        optimizer = restart(learner, ctx0)
        sync()
        start = time.perf_counter()
        loss, _, _ = train_step(step_learner, optimizer, METHOD, feats, labels, TAU, amp=args.amp)
        sync()
        return time.perf_counter() - start, loss

    def ref():
        optimizer = restart(reference, ctx0)
        sync()
        start = time.perf_counter()
        ref_feats = reference.image_features(images)
        sync()
        mid = time.perf_counter()
        loss, extra = reference.text_step(ref_feats, labels, optimizer, args.ref_chunk)
        sync()
        return time.perf_counter() - start - extra, mid - start, loss, extra

    ours()  # warm-up (first-call allocations)
    ours_runs = [ours() for _ in range(args.repeats)]
    ours_loss, ours_grad = ours_runs[-1][1], learner.ctx.grad.clone()
    if n_cls <= args.ref_warmup_max_k:
        ref()
    ref_runs = [ref() for _ in range(ref_repeats)]
    ref_loss, ref_grad = ref_runs[-1][2], reference.ctx.grad.clone()
    chunked = 0 < args.ref_chunk < n_cls
    checks = {"loss_ours": ours_loss, "loss_reference": ref_loss,
              "loss_rel_diff": abs(ours_loss - ref_loss) / abs(ref_loss),
              "grad_rel_diff": rel_diff(ours_grad, ref_grad),
              "grad_norm": float(ref_grad.norm())}
    lengths = learner.tokens.mask.sum(1)
    tokens_ours = learner.n_shared + int((lengths - learner.n_shared).sum())
    optimizer = restart(learner, ctx0)
    flops_ours = count_flops(lambda: train_step(learner, optimizer, METHOD, feats, labels, TAU, amp=args.amp))
    flops_img = count_flops(lambda: reference.image_features(images[:1])) * images.shape[0]
    two = CoOpReference(model, open_clip.get_tokenizer(backbone.arch), names[:2], ctx0).to(device)
    flops_txt = count_flops(lambda: two.text_step(feats, labels % 2, restart(two, ctx0))) / 2 * n_cls
    ours_s = stats([t for t, _ in ours_runs])
    ref_s = stats([t for t, _, _, _ in ref_runs])
    row = {
        "K": n_cls, "ours": ours_s, "reference": ref_s, "reference_image_encoder": stats([r[1] for r in ref_runs]),
        "reference_chunk": args.ref_chunk if chunked else None,
        "reference_extra_pass_excluded": stats([r[3] for r in ref_runs]) if chunked else None,
        "speedup": ref_s["median_s"] / ours_s["median_s"],
        "speedup_range": [ref_s["min_s"] / ours_s["max_s"], ref_s["max_s"] / ours_s["min_s"]],
        "text_positions": {"ours": tokens_ours, "reference": n_cls * int(reference.ids.shape[1]),
                           "ours_padded_without_sharing": n_cls * int(lengths.max())},
        "flops": {"ours": flops_ours, "reference": int(flops_img + flops_txt), "reference_image_encoder": flops_img},
        **checks,
        "equal": checks["loss_rel_diff"] < args.tolerance and checks["grad_rel_diff"] < args.tolerance,
    }
    print(f"K={n_cls}: ours {ours_s['median_s']:.3f} s, reference {ref_s['median_s']:.3f} s "
          f"(x{row['speedup']:.1f}); loss rel diff {checks['loss_rel_diff']:.1e}, grad rel diff "
          f"{checks['grad_rel_diff']:.1e} ({time.strftime('%H:%M:%S')})", flush=True)
    return row


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--k", type=int, nargs="+", default=[10, 100, 1000], help="numbers of classes")
    p.add_argument("--arch", default="ViT-B-16", help="open_clip architecture (name or model-config JSON)")
    p.add_argument("--n-ctx", type=int, default=16)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3, help="timed steps of ours (and of the reference)")
    p.add_argument("--ref-repeats-large", type=int, default=None,
                   help="timed reference steps for K >= --large-k (default: --repeats)")
    p.add_argument("--large-k", type=int, default=1000, help="see --ref-repeats-large")
    p.add_argument("--ref-warmup-max-k", type=int, default=100, help="warm the reference up only up to this K")
    p.add_argument("--ref-chunk", type=int, default=100,
                   help="reference classes per text graph when K is larger (memory); 0: one graph")
    p.add_argument("--tolerance", type=float, default=1e-5, help="largest relative loss / gradient difference")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", action="store_true", help="bfloat16 autocast of our text forward (CUDA only)")
    p.add_argument("--compile", action="store_true", help="torch.compile our learner")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=RESULTS, help="folder of the JSON result ('-': none)")
    return p


def run(args: argparse.Namespace) -> dict:
    """The benchmark's result: setup, one row per K. Raises SystemExit when a check fails."""
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as folder:
        model, backbone = random_clip(args.arch, Path(folder), args.seed, device=str(device))
    size = backbone.image_size
    images = torch.randn(args.batch, 3, size, size, generator=torch.Generator().manual_seed(args.seed)).to(device)
    result = {**machine(), "setup": {"arch": args.arch, "weights": "random init (open_clip.create_model)",
                                     "n_ctx": args.n_ctx, "batch": args.batch, "tau": TAU, "sgd": SGD,
                                     "dtype": "bfloat16 autocast (ours)" if args.amp else "float32",
                                     "compile": args.compile,
                                     "device": str(device), "tolerance": args.tolerance}, "rows": []}
    for n_cls in args.k:
        ref_repeats = args.ref_repeats_large if n_cls >= args.large_k and args.ref_repeats_large else args.repeats
        result["rows"].append(bench_k(model, backbone, n_cls, args, images, ref_repeats))
    result["loadavg_after"] = machine()["loadavg"]
    bad = [r["K"] for r in result["rows"] if not r["equal"]]
    if bad:
        raise SystemExit(f"bench_train: loss or gradient of ours and the reference differ by >= {args.tolerance} at "
                         f"K={bad}: {[(r['loss_rel_diff'], r['grad_rel_diff']) for r in result['rows']]}")
    return result


def table(result: dict) -> str:
    """Markdown table of a result."""
    lines = ["| K | ours s/step (min-max) | CoOp-style reference s/step (min-max) | of which image encoder | speedup "
             "| text positions ours / ref | GFLOP ours / ref | loss rel diff | grad rel diff |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        o, f = r["ours"], r["reference"]
        lines.append(
            f"| {r['K']:,} | {o['median_s']:.3f} ({o['min_s']:.3f}-{o['max_s']:.3f}) | {f['median_s']:.2f} "
            f"({f['min_s']:.2f}-{f['max_s']:.2f}) | {r['reference_image_encoder']['median_s']:.2f} | "
            f"**{r['speedup']:.1f}x** ({r['speedup_range'][0]:.1f}-{r['speedup_range'][1]:.1f}) | "
            f"{r['text_positions']['ours']:,} / {r['text_positions']['reference']:,} | "
            f"{r['flops']['ours'] / 1e9:,.0f} / {r['flops']['reference'] / 1e9:,.0f} | {r['loss_rel_diff']:.1e} | "
            f"{r['grad_rel_diff']:.1e} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    args = parser().parse_args(argv)
    result = run(args)
    print("\n" + table(result))
    save_result(args.out, "train", result)
    return result


if __name__ == "__main__":
    main()
