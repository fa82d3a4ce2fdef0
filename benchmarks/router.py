"""Router speed at the paper's shapes, against baselines measured in the same run on the same tensors.

    python benchmarks/router.py            # both shapes (the SVD baseline at the video shape takes a minute)
    python benchmarks/router.py --quick    # LLaVA shape only, fewer repeats

Shapes (float32, CPU):
    llava-7b-train  B=8, L_a=576,  L_b=128, D=4096   (LLaVA-1.5-7B, batch 8)
    qwen-video      B=1, L_a=8192, L_b=256, D=3584   (Qwen2.5-VL-7B, a video)

Ratios printed (lower is better for the first, higher for the others):
    router fwd+bwd / memory-bound pass   the router against torch.lerp over `a` (forward+backward), a pass that only
                                         reads and writes the tensors once each: the floor for any elementwise op.
                                         Target: at most 3x.
    literal Eq. 1 SVD / channel_scores   torch.linalg.svd of each example's token matrix (the paper's Eq. 1 as
                                         written) against our exact closed form. Target: at least 50x; the scores
                                         agree (max relative difference printed).
    svd_lowrank loop / channel_scores    what a quick port does: a per-example loop of torch.svd_lowrank(q=64).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from moir.router import MoIRRouter, channel_scores

SHAPES = {
    "llava-7b-train": dict(batch=8, len_a=576, len_b=128, dim=4096),
    "qwen-video": dict(batch=1, len_a=8192, len_b=256, dim=3584),
}


def timed(fn, repeats: int, warmup: int = 1) -> float:
    """Median wall time of `fn()` in seconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def literal_eq1_scores(a: torch.Tensor) -> torch.Tensor:
    """Eq. 1 as the paper writes it: an SVD per example, S_d = sum_i sigma_i^2 v_{i,d}^2."""
    scores = []
    for x in a:
        _, sigma, vh = torch.linalg.svd(x, full_matrices=False)
        scores.append((sigma[:, None] ** 2 * vh**2).sum(0))
    return torch.stack(scores)


def lowrank_loop_scores(a: torch.Tensor, q: int = 64) -> torch.Tensor:
    scores = []
    for x in a:
        _, sigma, v = torch.svd_lowrank(x, q=q)
        scores.append((sigma[None, :] ** 2 * v**2).sum(1))
    return torch.stack(scores)


def bench_shape(name: str, batch: int, len_a: int, len_b: int, dim: int, repeats: int) -> dict[str, float]:
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(batch, len_a, dim, generator=generator)
    b = torch.randn(batch, len_b, dim, generator=generator) * 0.02
    a_mask = torch.ones(batch, len_a, dtype=torch.bool)
    b_mask = torch.ones(batch, len_b, dtype=torch.bool)
    b_mask[:, len_b // 2 :] = torch.rand(batch, len_b - len_b // 2, generator=generator) < 0.5
    router = MoIRRouter(dim, 0.10)
    other = torch.randn_like(a)

    def router_step():
        a_leaf = a.detach().requires_grad_(True)
        b_leaf = b.detach().requires_grad_(True)
        a_out, b_out = router(a_leaf, b_leaf, a_mask, b_mask)
        torch.autograd.backward((a_out, b_out), (torch.ones_like(a_out), torch.ones_like(b_out)))

    def lerp_step():
        a_leaf = a.detach().requires_grad_(True)
        out = torch.lerp(a_leaf, other, 0.5)
        out.backward(torch.ones_like(out))

    t_router = timed(router_step, repeats)
    t_lerp = timed(lerp_step, repeats)
    t_scores = timed(lambda: channel_scores(a, a_mask), repeats)
    t_svd = timed(lambda: literal_eq1_scores(a), 1, warmup=0)
    t_lowrank = timed(lambda: lowrank_loop_scores(a), max(1, repeats // 2))
    ours, reference = channel_scores(a, a_mask), literal_eq1_scores(a)
    max_rel_diff = ((ours - reference).abs() / reference.abs().clamp_min(1e-12)).max().item()

    print(f"\n{name}: B={batch} L_a={len_a} L_b={len_b} D={dim} float32, {torch.get_num_threads()} threads")
    print(f"  router fwd+bwd            {t_router * 1e3:9.1f} ms")
    print(f"  memory-bound lerp fwd+bwd {t_lerp * 1e3:9.1f} ms   ratio {t_router / t_lerp:6.2f}x (target <= 3x)")
    print(f"  channel_scores            {t_scores * 1e3:9.2f} ms")
    print(f"  literal Eq. 1 (SVD)       {t_svd * 1e3:9.1f} ms   ratio {t_svd / t_scores:8.0f}x (target >= 50x)"
          f"   max rel diff {max_rel_diff:.1e}")
    print(f"  svd_lowrank(q=64) loop    {t_lowrank * 1e3:9.1f} ms   ratio {t_lowrank / t_scores:8.0f}x")
    return dict(router_vs_lerp=t_router / t_lerp, svd_vs_scores=t_svd / t_scores, lowrank_vs_scores=t_lowrank / t_scores)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="LLaVA shape only, fewer repeats")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    shapes = {"llava-7b-train": SHAPES["llava-7b-train"]} if args.quick else SHAPES
    for name, shape in shapes.items():
        bench_shape(name, **shape, repeats=2 if args.quick else args.repeats)


if __name__ == "__main__":
    main()
