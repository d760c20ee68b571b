"""Restore real images of any size with a trained network (no synthetic degradation applied).

    python -m serpent_basicsr.inference -opt options/test/X.yml -i blurry.png -o out/
    python -m serpent_basicsr.inference --net "{type: Serpent, preset: serpent_s}" \\
        --model experiments/NAME/models/net_g_latest.pth -i photos/ -o restored/ --tile 256

The network comes from `network_g` of an option file (`-opt`) or from a YAML/JSON spec
(`--net`); the weights from `--model` or the option file's `path.pretrain_network_g`.
Large images are processed in overlapping tiles (`--tile`), blended so that the seams
vanish (see `restore_image`). 8- and 16-bit, gray, RGB and RGBA files are read; gray is run
through the colour network and returned gray, alpha is kept as is, bit depth is kept when
the output format allows it. Outputs are written to a temporary file and renamed, so an
interrupted run never leaves a half-written image.
"""
from __future__ import annotations

import argparse
import copy
import math
import os
import os.path as osp
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

IMG_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp', '.ppm', '.pgm')
_HIGH_DEPTH_EXTS = ('.png', '.tif', '.tiff')


# ----------------------------------------------------------------------------- the core
def restore_image(net: 'torch.nn.Module', img: np.ndarray, tile: Optional[int] = None, tile_overlap: int = 32,
                  pad_multiple: Optional[int] = None, device: Optional[str] = None,
                  self_ensemble: bool = False) -> np.ndarray:
    """Run `net` on one image and return the restored image with the input's dtype and layout.

    img: H x W (gray), H x W x 1/3 (RGB order) or H x W x 4 (RGBA; alpha passed through);
    uint8, uint16, or float in [0, 1]. The net may change the size by an integer factor (SR).
    tile: process tile x tile crops (None: the whole image at once). Consecutive tiles
    overlap by at least `tile_overlap` pixels; in each tile, pixels within overlap/4 of an
    inner edge get weight 0 and the next overlap/4 a linear ramp up to 1, so every output
    pixel comes from tile centres. For a network whose receptive field radius is at most
    overlap/4 the tiled result equals the untiled one; for global-context nets (SSM,
    attention) the difference shrinks as the overlap grows.
    pad_multiple: reflect-pad each input so H and W are multiples of it (cropped after);
    default: `size_multiple_of(net)`.
    self_ensemble: average the outputs for the 8 flips/rotations of the input, each turned
    back (the usual x8 geometric self-ensemble; 8x the time, typically a little more PSNR).
    """
    import torch

    if not isinstance(img, np.ndarray) or img.ndim not in (2, 3) or img.size == 0:
        raise ValueError(f'restore_image: expected an H x W or H x W x C array, got {getattr(img, "shape", type(img))}')
    if tile is not None and tile_overlap >= tile:
        raise ValueError(f'tile_overlap ({tile_overlap}) must be smaller than tile ({tile})')
    if tile is not None and tile < 1 or tile_overlap < 0:
        raise ValueError(f'invalid tile={tile} / tile_overlap={tile_overlap}')
    dtype = img.dtype
    x = _to_float(img)
    gray_in = x.ndim == 2
    if gray_in:
        x = x[..., None]
    alpha = None
    if x.shape[2] == 4:
        x, alpha = x[..., :3], x[..., 3:]
    net_ch = _net_in_channels(net)
    ch = x.shape[2]
    if net_ch == ch:
        planes = [x]
    elif ch == 1 and net_ch == 3:
        planes = [np.repeat(x, 3, axis=2)]
    elif net_ch == 1:
        planes = [x[..., c:c + 1] for c in range(ch)]
    else:
        raise ValueError(f'the network takes {net_ch} channels; cannot restore an image with {ch}')

    dev = torch.device(device) if device else next(iter(net.parameters())).device
    multiple = pad_multiple or size_multiple_of(net)
    was_training = net.training
    net.eval()
    try:
        with torch.inference_mode():
            outs = []
            for p in planes:
                t = torch.from_numpy(np.ascontiguousarray(p.transpose(2, 0, 1)))[None].to(dev)
                run = lambda v: _run_tiled(net, v, tile, tile_overlap, int(multiple))  # noqa: E731
                y = geometric_self_ensemble(run, t) if self_ensemble else run(t)
                outs.append(y[0].permute(1, 2, 0).cpu().numpy())
    finally:
        net.train(was_training)
    y = np.concatenate(outs, axis=2) if len(outs) > 1 else outs[0]
    if ch == 1 and y.shape[2] == 3:
        y = y.mean(axis=2, keepdims=True)
    if alpha is not None:
        scale = y.shape[0] // alpha.shape[0]
        if scale != 1:
            alpha = np.repeat(np.repeat(alpha, scale, axis=0), scale, axis=1)
        y = np.concatenate([y, alpha], axis=2)
    if gray_in:
        y = y[..., 0]
    return _from_float(np.clip(y, 0.0, 1.0), dtype)


def geometric_self_ensemble(run: Callable[['torch.Tensor'], 'torch.Tensor'], x: 'torch.Tensor') -> 'torch.Tensor':
    """The x8 geometric self-ensemble of `run` on an N x C x H x W batch: the mean of run(x) over
    the 8 symmetries of the square (k quarter turns, with or without a transpose), each output
    mapped back by the inverse transform (H and W may differ; SR outputs work too)."""
    total = 0
    for transpose in (False, True):
        v = x.transpose(2, 3) if transpose else x
        for k in range(4):
            y = run(v.rot90(k, dims=(2, 3))).rot90(-k, dims=(2, 3))
            total = total + (y.transpose(2, 3) if transpose else y)
    return total / 8


def size_multiple_of(net: 'torch.nn.Module') -> int:
    """The multiple H and W must have for `net`: its own `size_multiple` or `pad_multiple` attribute
    (Serpent, or any net that declares it); else the least common multiple of the integer
    `window_size` attributes of its modules (window attention: BasicSR's SwinIR neither pads nor
    declares a multiple, its blocks carry `window_size`); else 1."""
    for name in ('size_multiple', 'pad_multiple'):
        value = getattr(net, name, None)
        if isinstance(value, int) and value > 0:
            return value
    multiple = 1
    for module in net.modules():
        window = getattr(module, 'window_size', None)
        if isinstance(window, int) and window > 0:
            multiple = math.lcm(multiple, window)
    return multiple


def _run_tiled(net, x, tile: Optional[int], overlap: int, multiple: int):
    import torch

    h, w = x.shape[-2:]
    if tile is None or (h <= tile and w <= tile):
        return _run_padded(net, x, multiple)
    ys, xs = _starts(h, tile, overlap), _starts(w, tile, overlap)
    out = weight = None
    scale = None
    for y0 in ys:
        for x0 in xs:
            th, tw = min(tile, h), min(tile, w)
            patch = _run_padded(net, x[..., y0:y0 + th, x0:x0 + tw], multiple)
            if scale is None:
                scale = patch.shape[-1] // tw
                kw = dict(dtype=patch.dtype, device=patch.device)
                out = torch.zeros(x.shape[0], patch.shape[1], h * scale, w * scale, **kw)
                weight = torch.zeros(1, 1, h * scale, w * scale, dtype=patch.dtype, device=patch.device)
            wy = _ramp(th * scale, y0 > 0, y0 + th < h, overlap * scale, patch)
            wx = _ramp(tw * scale, x0 > 0, x0 + tw < w, overlap * scale, patch)
            wgt = wy[:, None] * wx[None, :]
            sl = (..., slice(y0 * scale, (y0 + th) * scale), slice(x0 * scale, (x0 + tw) * scale))
            out[sl] += patch * wgt
            weight[sl] += wgt
    return out / weight


def _starts(n: int, tile: int, overlap: int) -> List[int]:
    if n <= tile:
        return [0]
    starts = list(range(0, n - tile, tile - overlap))
    return starts + [n - tile]


def _ramp(n: int, inner_start: bool, inner_end: bool, overlap: int, like):
    """1-D blending weights: 0 within overlap/4 of an inner edge, then a linear ramp over
    the next overlap/4. Image borders keep weight 1 (the untiled net sees them too)."""
    import torch

    d = torch.arange(n, dtype=like.dtype, device=like.device) + 0.5
    margin = overlap / 4.0
    ramp_len = max(overlap / 4.0, 1e-6)
    w = torch.ones(n, dtype=like.dtype, device=like.device)
    if inner_start:
        w = torch.minimum(w, ((d - margin) / ramp_len).clamp(0, 1))
    if inner_end:
        w = torch.minimum(w, ((n - d - margin) / ramp_len).clamp(0, 1))
    return w


def _run_padded(net, x, multiple: int):
    # Serpent's own padding rule (bottom/right reflection, repeated when the pad exceeds the size).
    from serpent_basicsr.archs.serpent_arch import pad_to_multiple

    h, w = x.shape[-2:]
    x = pad_to_multiple(x, multiple)
    y = net(x)
    if y.shape[-1] % x.shape[-1] or y.shape[-2] % x.shape[-2]:
        raise ValueError(f'network output {tuple(y.shape[-2:])} is not an integer multiple of its input '
                         f'{tuple(x.shape[-2:])}')
    s = y.shape[-1] // x.shape[-1]
    return y[..., :h * s, :w * s]


def _net_in_channels(net) -> int:
    import torch

    bare = getattr(net, 'module', net)
    n = getattr(bare, 'num_in_ch', None) or getattr(bare, 'in_chans', None)
    if isinstance(n, int):
        return n
    for m in bare.modules():
        if isinstance(m, torch.nn.Conv2d):
            return m.in_channels
    return 3


def _to_float(img: np.ndarray) -> np.ndarray:
    if img.dtype == np.uint8:
        return img.astype(np.float32) / 255.0
    if img.dtype == np.uint16:
        return img.astype(np.float32) / 65535.0
    if np.issubdtype(img.dtype, np.floating):
        return img.astype(np.float32)
    raise ValueError(f'unsupported image dtype {img.dtype} (use uint8, uint16 or float in [0, 1])')


def _from_float(img: np.ndarray, dtype) -> np.ndarray:
    if dtype == np.uint8:
        return np.round(img * 255.0).astype(np.uint8)
    if dtype == np.uint16:
        return np.round(img * 65535.0).astype(np.uint16)
    return img.astype(dtype)


# ----------------------------------------------------------------------------- loading
def build_net(spec: Dict[str, Any]) -> 'torch.nn.Module':
    """Build a network from a `network_g`-style dict through BasicSR's ARCH_REGISTRY."""
    import serpent_basicsr  # noqa: F401  (registers our archs, fixes basicsr imports)
    from basicsr.archs import build_network

    if not isinstance(spec, dict) or 'type' not in spec:
        raise ValueError(f'network spec must be a mapping with a "type" key, got {spec!r}')
    return build_network(copy.deepcopy(dict(spec)))


def load_weights(net, path: str, params_key: str = 'auto') -> str:
    """Load a BasicSR checkpoint (`{'params': ..., 'params_ema': ...}`) or a plain state dict.
    params_key 'auto' prefers params_ema (the EMA weights BasicSR validates with). Returns
    the key used."""
    import torch

    if not osp.isfile(path):
        raise FileNotFoundError(f'checkpoint not found: {path}')
    try:
        ckpt = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # noqa: BLE001  (any unpickling error means the same to the user)
        raise ValueError(f'cannot load checkpoint {path} (corrupt or not a PyTorch file): {e}') from e
    if not isinstance(ckpt, dict):
        raise ValueError(f'checkpoint {path} holds a {type(ckpt).__name__}, not a state dict')
    if params_key == 'auto':
        params_key = next((k for k in ('params_ema', 'params') if isinstance(ckpt.get(k), dict)), '')
    if params_key:
        if params_key not in ckpt:
            raise KeyError(f'checkpoint {path} has no {params_key!r}; keys: {sorted(ckpt)}')
        state = ckpt[params_key]
    else:
        state = ckpt
    state = {k[7:] if k.startswith('module.') else k: v for k, v in state.items()}
    try:
        getattr(net, 'module', net).load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(f'checkpoint {path} does not match the network: {e}') from e
    return params_key or '<state dict>'


def read_image(path: str) -> np.ndarray:
    """Read as stored (8/16-bit, gray/RGB/RGBA), colour planes in RGB(A) order."""
    import cv2

    if not osp.isfile(path):
        raise FileNotFoundError(f'input image not found: {path}')
    img = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ValueError(f'cannot read image {path} (corrupt or unsupported format)')
    if img.ndim == 3 and img.shape[2] == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    elif img.ndim == 3 and img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGBA)
    return img


def write_image_atomic(path: str, img: np.ndarray) -> None:
    """Encode in memory, write to a temporary file beside `path`, then rename over it."""
    import cv2

    ext = osp.splitext(path)[1].lower() or '.png'
    if img.dtype == np.uint16 and ext not in _HIGH_DEPTH_EXTS:
        img = (img // 257).astype(np.uint8)
    if img.ndim == 3 and img.shape[2] == 3:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    elif img.ndim == 3 and img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_RGBA2BGRA)
    ok, buf = cv2.imencode(ext, img)
    if not ok:
        raise ValueError(f'cannot encode an image as {ext} for {path}')
    folder = osp.dirname(osp.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f'.{osp.basename(path)}.', suffix='.tmp')
    try:
        with os.fdopen(fd, 'wb') as f:
            f.write(buf.tobytes())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if osp.exists(tmp):
            os.remove(tmp)
        raise


def list_images(folder: str) -> List[str]:
    return sorted(osp.join(folder, f) for f in os.listdir(folder)
                  if f.lower().endswith(IMG_EXTENSIONS) and not f.startswith('.'))


# ----------------------------------------------------------------------------- CLI
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog='python -m serpent_basicsr.inference', description=__doc__.split('\n\n')[0])
    p.add_argument('-opt', '--opt', help='option YAML with network_g (and optionally path.pretrain_network_g)')
    p.add_argument('--net', help='network spec as YAML/JSON, e.g. "{type: Serpent, preset: serpent_s}"')
    p.add_argument('--model', help='checkpoint .pth (default: path.pretrain_network_g of -opt)')
    p.add_argument('-i', '--input', required=True, help='an image file or a folder of images')
    p.add_argument('-o', '--output', required=True, help='output folder, or an output file for a single image')
    p.add_argument('--tile', type=int, default=None, help='tile size for large images (default: whole image)')
    p.add_argument('--tile-overlap', type=int, default=32, help='overlap between tiles in pixels (default 32)')
    p.add_argument('--self-ensemble', action='store_true',
                   help='average over the 8 flips/rotations of each image (8x the time)')
    p.add_argument('--params-key', default='auto',
                   help='auto (params_ema, else params), params_ema, params, or "" for a plain state dict')
    p.add_argument('--device', default='auto', help='auto, cpu, cuda, cuda:1, ...')
    p.add_argument('--pad-multiple', type=int, default=None,
                   help='pad H and W to a multiple of this (default: from the net)')
    p.add_argument('--suffix', default='', help='added to each output file name stem')
    p.add_argument('--ext', default=None, help='output format, e.g. png (default: png; 16-bit kept)')
    return p


def _load_spec(args) -> Tuple[Dict[str, Any], Optional[str]]:
    import yaml

    spec, ckpt = None, args.model
    if args.opt:
        if not osp.isfile(args.opt):
            raise FileNotFoundError(f'option file not found: {args.opt}')
        with open(args.opt) as f:
            opt = yaml.safe_load(f) or {}
        if 'network_g' not in opt:
            raise ValueError(f'option file {args.opt} has no network_g')
        spec = opt['network_g']
        path_opt = opt.get('path') or {}
        ckpt = ckpt or path_opt.get('pretrain_network_g')
        if args.params_key == 'auto' and path_opt.get('param_key_g'):
            args.params_key = path_opt['param_key_g']
    if args.net:
        spec = yaml.safe_load(args.net)
    if spec is None:
        raise ValueError('give the network with -opt OPTION.yml or --net SPEC')
    if not ckpt:
        raise ValueError('give the checkpoint with --model (or path.pretrain_network_g in the option file)')
    return spec, osp.expanduser(ckpt)


def _outputs(inp: str, out: str, suffix: str, ext: Optional[str]) -> List[Tuple[str, str]]:
    if osp.isdir(inp):
        files = list_images(inp)
        if not files:
            raise FileNotFoundError(f'no images ({", ".join(IMG_EXTENSIONS)}) in folder {inp}')
        out_dir = out
    elif osp.isfile(inp):
        files = [inp]
        if osp.splitext(out)[1].lower() in IMG_EXTENSIONS:
            return [(inp, out)]
        out_dir = out
    else:
        raise FileNotFoundError(f'input not found: {inp}')
    ext = '.' + (ext or 'png').lstrip('.')
    pairs = [(f, osp.join(out_dir, osp.splitext(osp.basename(f))[0] + suffix + ext)) for f in files]
    return pairs


def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI entry point; returns 0 when every image was restored, 1 when some failed, 2 on setup errors."""
    args = _parser().parse_args(argv)
    try:
        import torch

        spec, ckpt = _load_spec(args)
        pairs = _outputs(args.input, args.output, args.suffix, args.ext)
        for src, dst in pairs:
            if osp.abspath(src) == osp.abspath(dst):
                raise ValueError(f'output {dst} would overwrite its input; choose another -o or --suffix')
        device = args.device
        if device == 'auto':
            device = 'cuda' if torch.cuda.is_available() else 'cpu'
        net = build_net(spec)
        key = load_weights(net, ckpt, args.params_key)
        net = net.to(device).eval()
    except (OSError, ValueError, KeyError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    print(f'network {spec.get("type")} from {ckpt} [{key}] on {device}')
    failed = 0
    for src, dst in pairs:
        try:
            t0 = time.time()
            img = read_image(src)
            out = restore_image(net, img, tile=args.tile, tile_overlap=args.tile_overlap,
                                pad_multiple=args.pad_multiple, device=device, self_ensemble=args.self_ensemble)
            write_image_atomic(dst, out)
            print(f'{src} -> {dst} ({img.shape[1]}x{img.shape[0]}, {time.time() - t0:.1f} s)')
        except (OSError, ValueError, RuntimeError) as e:
            failed += 1
            print(f'error: {src}: {e}', file=sys.stderr)
    if failed:
        print(f'{failed} of {len(pairs)} images failed', file=sys.stderr)
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
