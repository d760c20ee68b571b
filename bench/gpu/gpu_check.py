"""One short CUDA check for Serpent: does the CUDA path match the CPU, and what does it cost?

1. Scan op: every available backend on CUDA tensors (mamba-ssm's kernel where its extension is
   built, else our torch backend) against the float64 reference on the CPU, forward and grads;
   SS2D's cross_selective_scan on CUDA against the fused CPU kernel in float64.
2. Serpent presets: CUDA output (and input gradient) against the CPU output, same weights.
3. Timing of the scan op alone per backend (batch 1, 4 x 96 channels, d_state 16, L 4,096 / 16,384).
4. Timing: forward, training step (Adam, L1) and peak CUDA memory, Serpent presets vs
   BasicSR's SwinIR (11.5 M and small), at 256 / 512 / 1024 (OOM is recorded, not fatal).
Writes bench/gpu/results/gpu.json (or --out) after the checks and after every timing.

UNTESTED ON A GPU when written (no CUDA machine was available); `--dry-run` runs every part
on the CPU at tiny sizes so the script is known to import and run end to end.

    bash bench/gpu/run_gpu.sh            # on a CUDA machine
    python bench/gpu/gpu_check.py --dry-run
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import statistics
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Dict, List

import torch

import serpent_basicsr  # noqa: F401  (compat + registries before basicsr)
from serpent_basicsr import ops
from serpent_basicsr.archs.efficiency import build_named, count_params_flops

HERE = Path(__file__).resolve().parent


def sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def scan_inputs(batch: int, dim: int, groups: int, n: int, length: int, device, dtype):
    g = torch.Generator().manual_seed(0)
    t = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    cpu = dict(u=t(batch, dim, length), delta=t(batch, dim, length) * 0.5,
               A=-torch.rand(dim, n, generator=g, dtype=torch.float64) * 2 - 0.1,
               B=t(batch, groups, n, length), C=t(batch, groups, n, length), D=t(dim), z=t(batch, dim, length),
               delta_bias=t(dim) * 0.1)
    return cpu, {k: v.to(device, dtype) for k, v in cpu.items()}


def call_scan(kw: Dict[str, torch.Tensor], backend=None):
    extra = {} if backend is None else {'backend': backend}
    return ops.selective_scan(**kw, delta_softplus=True, **extra)


def check_scan(device: torch.device) -> List[Dict[str, Any]]:
    out = []
    backends = list(ops.available_backends())
    for shape in [(1, 8, 4, 16, 37), (2, 64, 4, 16, 1024)]:
        cpu, dev = scan_inputs(*shape, device=device, dtype=torch.float32)
        ref_in = {k: v.clone().requires_grad_(v.is_floating_point()) for k, v in cpu.items()}
        y_ref = ops.selective_scan_ref(**ref_in, delta_softplus=True)
        grads_ref = torch.autograd.grad(y_ref.sum(), list(ref_in.values()))
        for b in backends + [None]:
            rec: Dict[str, Any] = dict(shape=list(shape), backend=b or 'auto', device=str(device))
            try:
                inp = {k: v.clone().requires_grad_(True) for k, v in dev.items()}
                y = call_scan(inp, b)
                grads = torch.autograd.grad(y.sum(), list(inp.values()))
                rec['max_abs_err_y'] = (y.double().cpu() - y_ref).abs().max().item()
                rec['max_rel_err_grads'] = max(((g.double().cpu() - gr).abs().max() / gr.abs().max().clamp_min(1e-12)
                                                ).item() for g, gr in zip(grads, grads_ref))
                rec['ok'] = rec['max_abs_err_y'] < 1e-3 * max(1.0, y_ref.abs().max().item()) \
                    and rec['max_rel_err_grads'] < 1e-2
            except Exception as exc:  # noqa: BLE001 - record and go on (e.g. backend not for this device)
                rec['error'] = f'{type(exc).__name__}: {exc}'
            out.append(rec)
    return out


def check_cross_scan(device: torch.device) -> List[Dict[str, Any]]:
    """ops.cross_selective_scan (SS2D's op) on `device` (auto backend: the plain composition around
    mamba-ssm's kernel on CUDA) against the fused CPU kernel in float64, forward and grads."""
    out = []
    for batch, d, h, w, k, n, r in [(1, 8, 7, 9, 4, 16, 2), (2, 32, 24, 40, 4, 16, 3)]:
        g = torch.Generator().manual_seed(0)
        cpu = dict(x=torch.randn(batch, h * w, d, generator=g, dtype=torch.float64),
                   rows=torch.randn(batch, k, h * w, r + 2 * n, generator=g, dtype=torch.float64),
                   dt_weight=0.5 * torch.randn(k * d, r, generator=g, dtype=torch.float64),
                   A=-2 * torch.rand(k * d, n, generator=g, dtype=torch.float64) - 0.1,
                   D=torch.randn(k * d, generator=g, dtype=torch.float64),
                   delta_bias=torch.randn(k * d, generator=g, dtype=torch.float64) - 2)
        rec: Dict[str, Any] = dict(shape=[batch, d, h, w, k, n, r], device=str(device))
        try:
            ref_in = {name: v.clone().requires_grad_(True) for name, v in cpu.items()}
            spec = 'cpu' if 'cpu' in ops.available_backends() else 'ref'
            y_ref = ops.cross_selective_scan(**ref_in, height=h, width=w, backend=spec)
            grads_ref = torch.autograd.grad(y_ref.sum(), list(ref_in.values()))
            inp = {name: v.to(device, torch.float32).requires_grad_(True) for name, v in cpu.items()}
            y = ops.cross_selective_scan(**inp, height=h, width=w)
            grads = torch.autograd.grad(y.sum(), list(inp.values()))
            rec['reference_backend'] = spec
            rec['max_abs_err_y'] = (y.double().cpu() - y_ref).abs().max().item()
            rec['max_rel_err_grads'] = max(((gd.double().cpu() - gr).abs().max() / gr.abs().max().clamp_min(1e-12)
                                            ).item() for gd, gr in zip(grads, grads_ref))
            rec['ok'] = rec['max_abs_err_y'] < 1e-3 * max(1.0, y_ref.abs().max().item()) \
                and rec['max_rel_err_grads'] < 1e-2
        except Exception as exc:  # noqa: BLE001 - record and go on
            rec['error'] = f'{type(exc).__name__}: {exc}'
        out.append(rec)
    return out


def time_scan(device: torch.device, lengths: List[int], repeats: int) -> List[Dict[str, Any]]:
    """The scan op alone on `device`, float32, bench/scan's shape (batch 1, 4 directions x 96
    channels, d_state 16): forward and forward+backward per backend, milliseconds."""
    out = []
    for length in lengths:
        _, dev = scan_inputs(1, 4 * 96, 4, 16, length, device=device, dtype=torch.float32)
        runs_here = {'cpu': device.type == 'cpu', 'cuda': device.type == 'cuda', 'torch': True, 'ref': False}
        for b in [x for x in ops.available_backends() if runs_here[x]]:
            rec: Dict[str, Any] = dict(length=length, backend=b)
            try:
                inp = {k: v.clone().requires_grad_(True) for k, v in dev.items()}
                rec['forward_ms'] = 1e3 * statistics.median(timed(lambda: call_scan(dev, b), device, repeats))
                rec['fwd_bwd_ms'] = 1e3 * statistics.median(
                    timed(lambda: call_scan(inp, b).sum().backward(), device, repeats))
            except Exception as exc:  # noqa: BLE001 - record and go on
                rec['error'] = f'{type(exc).__name__}: {exc}'.splitlines()[0]
            out.append(rec)
    return out


def check_model(name: str, device: torch.device, size: int, overrides: Dict[str, Any]) -> Dict[str, Any]:
    torch.manual_seed(0)
    net_cpu = build_named(name, **overrides).eval()
    net_dev = build_named(name, **overrides).to(device).eval()
    net_dev.load_state_dict(net_cpu.state_dict())
    x = torch.rand(1, 3, size, size + 8, generator=torch.Generator().manual_seed(1))
    xc, xd = x.clone().requires_grad_(True), x.to(device).requires_grad_(True)
    yc, yd = net_cpu(xc), net_dev(xd)
    (gc,), (gd,) = torch.autograd.grad(yc.square().sum(), xc), torch.autograd.grad(yd.square().sum(), xd)
    return dict(model=name, size=[size, size + 8], max_abs_err_out=(yd.cpu() - yc).abs().max().item(),
                max_rel_err_input_grad=((gd.cpu() - gc).abs().max() / gc.abs().max()).item())


def timed(fn: Callable[[], None], device: torch.device, repeats: int) -> List[float]:
    fn()  # warm-up (kernels, allocator, Adam state)
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return times


def bench(name: str, size: int, device: torch.device, repeats: int, amp: bool, overrides) -> Dict[str, Any]:
    rec: Dict[str, Any] = dict(model=name, size=size, amp_bf16=amp)
    try:
        torch.manual_seed(0)
        net = build_named(name, **overrides).to(device)
        rec['params'] = sum(p.numel() for p in net.parameters())
        rec['gflops'] = count_params_flops(net.cpu(), (1, 3, size, size))['flops'] / 1e9
        net.to(device)
        x, target = torch.rand(1, 3, size, size, device=device), torch.rand(1, 3, size, size, device=device)
        ac = torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp)
        for mode in ('forward', 'train_step'):
            if device.type == 'cuda':
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            if mode == 'forward':
                net.eval()

                def fn() -> None:
                    with torch.inference_mode(), ac:
                        net(x)
            else:
                net.train()
                opt = torch.optim.Adam(net.parameters(), lr=1e-4)

                def fn() -> None:
                    opt.zero_grad(set_to_none=True)
                    with ac:
                        loss = torch.nn.functional.l1_loss(net(x).float(), target)
                    loss.backward()
                    opt.step()
            try:
                times = timed(fn, device, repeats)
                rec[mode] = dict(ms=1e3 * statistics.median(times), times_ms=[1e3 * t for t in times])
                if device.type == 'cuda':
                    rec[mode]['peak_mem_gb'] = torch.cuda.max_memory_allocated(device) / 1024 ** 3
            except torch.OutOfMemoryError as exc:
                rec[mode] = dict(error=f'OOM: {str(exc).splitlines()[0]}')
                if device.type == 'cuda':
                    torch.cuda.empty_cache()
        del net
    except Exception as exc:  # noqa: BLE001
        rec['error'] = f'{type(exc).__name__}: {exc}'
        rec['traceback'] = traceback.format_exc()[-2000:]
    return rec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--dry-run', action='store_true', help='CPU only, tiny sizes: checks the script runs')
    ap.add_argument('--sizes', nargs='+', type=int, default=[256, 512, 1024])
    ap.add_argument('--models', nargs='+', default=['serpent_s', 'serpent_b', 'serpent_l', 'swinir', 'swinir_small'])
    ap.add_argument('--repeats', type=int, default=5)
    ap.add_argument('--amp', action='store_true', help='also time bf16 autocast')
    ap.add_argument('--out', default=None,
                    help='JSON path (default results/gpu.json; with --dry-run out/gpu_dry_run.json)')
    ap.add_argument('--budget-s', type=float, default=None,
                    help='skip the model timings not started within this many seconds of the start')
    args = ap.parse_args()
    start = time.time()

    if args.dry_run:
        device, sizes, repeats = torch.device('cpu'), [32], 1
        tiny = dict(embed_dim=8, depths=[1, 1], bottleneck_depth=1, d_state=4)
        overrides = {m: (tiny if m.startswith('serpent') else dict(embed_dim=12, depths=[1], num_heads=[2]))
                     for m in args.models}
        args.out = args.out or str(HERE / 'out' / 'gpu_dry_run.json')
    else:
        if not torch.cuda.is_available():
            raise SystemExit('gpu_check: no CUDA device visible (use --dry-run to check the script on a CPU)')
        device, sizes, repeats = torch.device('cuda'), args.sizes, args.repeats
        args.out = args.out or str(HERE / 'results' / 'gpu.json')
        overrides = {m: {} for m in args.models}
    result: Dict[str, Any] = dict(
        date=time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()), dry_run=args.dry_run, torch=torch.__version__,
        device=torch.cuda.get_device_name() if device.type == 'cuda' else platform.processor() or 'cpu',
        scan_backends=list(ops.available_backends()),
        scan_backend_for_device=(ops.resolve_backend(device) if hasattr(ops, 'resolve_backend') else '?'),
        mamba_cuda_extension_built=importlib.util.find_spec('selective_scan_cuda') is not None)
    print(json.dumps({k: v for k, v in result.items()}), flush=True)

    def save() -> None:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1))

    result['scan_check'] = check_scan(device)
    print('scan check:', json.dumps(result['scan_check']), flush=True)
    result['cross_scan_check'] = check_cross_scan(device)
    print('cross scan check:', json.dumps(result['cross_scan_check']), flush=True)
    result['model_check'] = [check_model(m, device, 32 if args.dry_run else 64, overrides[m])
                             for m in args.models if m.startswith('serpent')]
    print('model check:', json.dumps(result['model_check']), flush=True)
    save()  # the checks survive a timing that runs out of time
    result['scan_timing'] = time_scan(device, [64] if args.dry_run else [4096, 16384], repeats)
    print('scan timing:', json.dumps(result['scan_timing']), flush=True)
    result['timing'] = []
    for size in sizes:
        for m in args.models:
            for amp in ([False, True] if args.amp else [False]):
                if args.budget_s is not None and time.time() - start > args.budget_s:
                    result['timing'].append(dict(model=m, size=size, amp_bf16=amp, skipped='time budget'))
                    continue
                rec = bench(m, size, device, repeats, amp, overrides[m])
                print(json.dumps({k: v for k, v in rec.items() if k != 'traceback'}), flush=True)
                result['timing'].append(rec)
                save()
    save()
    print(f'wrote {args.out}')


if __name__ == '__main__':
    main()
