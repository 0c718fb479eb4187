import sys, time, torch, torch.nn.functional as F
sys.path.insert(0, ".")
import numba, numba_cuda
print("numba", numba.__version__, "torch", torch.__version__)
import upsamplelib as ul
print(ul.CUDA_TARGET)
torch.manual_seed(0)
ok = True
for mode, ac in [('nearest',None),('nearest-exact',None),('bilinear',False),('bilinear',True)]:
  for sf in [2, 1.7, 0.6, 3]:
    for dt in [torch.float32, torch.float64]:
      x = torch.randn(2,3,17,19, dtype=dt, device="cuda", requires_grad=True)
      kw = dict(scale_factor=sf, mode=mode, align_corners=ac)
      xc = x.detach().cpu().requires_grad_()
      r = F.interpolate(xc, **kw); g = torch.randn_like(r)
      gr, = torch.autograd.grad(r, xc, g)
      y = ul.interpolate(x, backend="cuda", **kw)
      gy, = torch.autograd.grad(y, x, g.cuda())
      yc = ul.interpolate(xc, backend="cpu", **kw)
      e1 = (y.cpu()-r).abs().max().item(); e2 = (gy.cpu()-gr).abs().max().item(); same = torch.equal(y.cpu(), yc)
      if e1 > 1e-5 or e2 > 1e-4 or not same: ok = False; print("BAD", mode, ac, sf, dt, e1, e2, same)
print("all ok", ok)
def med(f, n=50):
    for _ in range(5): f()
    torch.cuda.synchronize(); ts=[]
    for _ in range(n):
        t=time.perf_counter(); f(); torch.cuda.synchronize(); ts.append(time.perf_counter()-t)
    return sorted(ts)[n//2]*1e3
x = torch.randn(1,64,128,128, device="cuda")
for mode in ["nearest","bilinear"]:
    a = med(lambda: ul.interpolate(x, scale_factor=2, mode=mode, backend="cuda"))
    b = med(lambda: F.interpolate(x, scale_factor=2, mode=mode))
    xr = x.clone().requires_grad_()
    y1 = ul.interpolate(xr, scale_factor=2, mode=mode, backend="cuda"); y2 = F.interpolate(xr, scale_factor=2, mode=mode)
    g = torch.randn_like(y1)
    c = med(lambda: torch.autograd.grad(y1, xr, g, retain_graph=True))
    d = med(lambda: torch.autograd.grad(y2, xr, g, retain_graph=True))
    print(mode, f"GPU fwd {a:.3f} vs {b:.3f} ms ratio {a/b:.2f}   bwd {c:.3f} vs {d:.3f} ratio {c/d:.2f}")
