import sys, os, torch
sys.path.insert(0, os.getcwd())
import kernels.topk.triton_topk as tt
from kernels.topk import topk_rows
DEV = "cuda"; K = 2048; S, T = 2048, 131072
g = torch.Generator(device=DEV).manual_seed(0)
x = torch.randn(1, S, T, device=DEV, generator=g)
G = tt.bound_group(T)
vis = torch.arange(T, device=DEV)[None, :] <= torch.arange(T - S, T, device=DEV)[:, None]
M = x[0].masked_fill(~vis, float("-inf")).view(1, S, T // G, G).amax(-1).contiguous()
del vis
for _ in range(2):
    topk_rows(x, K, T - S, method="bound", maxima=M, group=G, block=1024)
torch.cuda.synchronize()
