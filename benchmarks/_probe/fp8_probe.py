import sys, os, torch
sys.path.insert(0, os.getcwd())
from triton.testing import do_bench
import kernels.sparse_attn.triton_fwd as tf
from kernels.sparse_attn import sparse_mla_fwd, sparse_mla_decode_ref
DEV = "cuda"; BF = torch.bfloat16; H, R, P, K = 16, 512, 64, 2048
g = torch.Generator(device=DEV).manual_seed(0)
def rel(a, b): return ((a.double() - b.double()).norm() / b.double().norm()).item()
for L in (16384, 131072):
    ql = (torch.randn(1, L, H, R, device=DEV, generator=g) * 0.1).to(BF)
    qp = (torch.randn(1, L, H, P, device=DEV, generator=g) * 0.1).to(BF)
    kv = torch.randn(1, L, R, device=DEV, generator=g).to(BF)
    pe = torch.randn(1, L, P, device=DEV, generator=g).to(BF)
    t = torch.arange(L, device=DEV)[:, None]
    idx = (torch.rand(L, K, device=DEV, generator=g) * (t + 1)).long().clamp(max=t).sort(-1).values
    idx = torch.where(torch.arange(K, device=DEV)[None, :] <= t, idx, -1).int()[None]
    scale = (R + P) ** -0.5
    res = {}
    for ng in (4, 1):
        kg = kv.float().view(1, L, ng, R // ng)
        s = kg.abs().amax(-1).clamp(min=1e-4) / 448
        kv8 = (kg / s[..., None]).to(torch.float8_e4m3fn).view(1, L, R)
        o, _ = sparse_mla_fwd(ql[:, -64:], qp[:, -64:], kv8, pe, idx[:, -64:], scale, kv_scale=s)
        r, _ = sparse_mla_decode_ref(ql[:, -64:], qp[:, -64:], kv8, pe, idx[:, -64:], scale, kv_scale=s)
        print(f"L={L} ng={ng} split-scale rel {rel(o, r):.2e}", flush=True)
        for cfg in (dict(block_k=64, num_warps=8, num_stages=2), dict(block_k=32, num_warps=4, num_stages=3),
                    dict(block_k=64, num_warps=4, num_stages=3), dict(block_k=32, num_warps=4, num_stages=2),
                    dict(block_k=64, num_warps=4, num_stages=2)):
            tm = do_bench(lambda: sparse_mla_fwd(ql, qp, kv8, pe, idx, scale, kv_scale=s, **cfg), warmup=5, rep=50 if L > 20000 else 100, return_mode="median")
            print(f"  L={L} fp8 ng={ng} split-scale {cfg}: {tm:.2f} ms", flush=True)
        orig = tf.split_scale_fp8
        tf.split_scale_fp8 = lambda *a: False
        tm = do_bench(lambda: sparse_mla_fwd(ql, qp, kv8, pe, idx, scale, kv_scale=s, block_k=32, num_warps=4, num_stages=3), warmup=5, rep=50, return_mode="median")
        tf.split_scale_fp8 = orig
        print(f"  L={L} fp8 ng={ng} per-element (old) bk32 w4 s3: {tm:.2f} ms", flush=True)
    tm = do_bench(lambda: sparse_mla_fwd(ql, qp, kv, pe, idx, scale), warmup=5, rep=50, return_mode="median")
    print(f"  L={L} bf16: {tm:.2f} ms", flush=True)
    del ql, qp, kv, pe, idx, kv8
    torch.cuda.empty_cache()
