import sys, os, torch, triton
sys.path.insert(0, os.getcwd())
from triton.testing import do_bench
import kernels.topk.triton_topk as tt
from kernels.topk import topk_ref, canonical, topk_rows
DEV = "cuda"
K = 2048
g = torch.Generator(device=DEV).manual_seed(0)
for S, T in ((2048, 65536), (2048, 131072)):
    x = torch.randn(1, S, T, device=DEV, generator=g)
    G = tt.bound_group(T)
    vis = torch.arange(T, device=DEV)[None, :] <= torch.arange(T - S, T, device=DEV)[:, None]
    M = x[0].masked_fill(~vis, float("-inf")).view(1, S, T // G, G).amax(-1).contiguous()
    del vis
    ref = topk_ref(x[:, :8], K, T - S).long()
    ref2 = topk_ref(x[:, -8:], K, T - 8).long()
    orig = tt._select
    for kw in [dict(), dict(block=32), dict(block=128), dict(block=256), dict(block=64, bound_chunk=64),
               dict(block=64, bound_chunk=1024), dict(filter_warps=2), dict(filter_warps=8), dict(num_warps=4),
               dict(num_warps=16), dict(bound_bits=12)]:
        kw2 = dict(dict(maxima=M, group=G), **kw)
        f = lambda: topk_rows(x, K, T - S, method="bound", **kw2)
        out = f()
        ok = torch.equal(canonical(out[:, :8]), ref) and torch.equal(canonical(out[:, -8:]), ref2)
        t = do_bench(f, warmup=10, rep=100, return_mode="median")
        tt._select = lambda *a, **k: None
        st = []
        for n in (1, 2, 3):
            os.environ["ENVFACTORY_TOPK_STAGES"] = str(n)
            st.append(do_bench(f, warmup=10, rep=100, return_mode="median"))
        os.environ["ENVFACTORY_TOPK_STAGES"] = "3"
        tt._select = orig
        kw.pop("maxima", 0)
        print(f"S={S} T={T} G={G} {kw}: {t:.3f} ms (tau {st[0]:.3f}, +filter {st[1]:.3f}, +select {st[2]:.3f}) ok={ok} "
              f"{S * (T - S / 2) * 4 / t / 1e6:.0f} GB/s", flush=True)
    t = do_bench(lambda: topk_rows(x, K, T - S, method="radix", block=4096, num_warps=8), warmup=5, rep=50, return_mode="median")
    print(f"  radix: {t:.3f} ms")
    t = do_bench(lambda: x.amax(-1), warmup=5, rep=50, return_mode="median")
    print(f"  torch amax over rows (read floor): {t:.3f} ms {x.numel()*4/t/1e6:.0f} GB/s")
    del x, M
