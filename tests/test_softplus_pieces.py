"""The float softplus of the cpu kernel's prologue: the polynomial pieces of csrc/softplus_pieces.h
(AVX-512) and the exp + log1p path (everywhere else, and for vectors with a lane below the pieces),
checked through the scan itself: with u = 1, B = 1, C = (1, 0, ..., 0) and a decay of 2^-126 at
most (A = -1e30), y_t is delta_t = softplus(x_t) and d y_t / d x_t = sigmoid(x_t)."""
import importlib.util
import pathlib

import numpy as np
import pytest
import torch

from serpent_basicsr.ops import available_backends
from serpent_basicsr.ops import cpu_scan

from test_scan_lanes import cpu_scan_with

CSRC = pathlib.Path(__file__).resolve().parents[1] / 'serpent_basicsr' / 'ops' / 'csrc'  # (the generator is a repo tool)
spec = importlib.util.spec_from_file_location('gen_softplus_pieces', CSRC / 'gen_softplus_pieces.py')
gen = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gen)

EXT = cpu_scan.load() if 'cpu' in available_backends() else None
needs_cpu = pytest.mark.skipif(EXT is None, reason='needs the compiled kernel')
PIECES_TOL = 2.5e-7  # the pieces: 1.7e-7 measured
EXP_LOG1P_TOL = 5e-7  # the exp + log1p path: 4.1e-7 measured


def test_header_pieces_are_accurate():
    """The header's coefficients, evaluated as the kernel does (float32 FMA Horner)."""
    assert gen.max_rel_error(gen.read_header()) < 2e-7


def test_header_matches_the_generator():
    """The header's constants are the generator's, and its pieces sit where the kernel looks them up:
    piece m at index (m + 16) mod 32, with c0 = softplus(m) and c1 = sigmoid(m) (its value and slope
    at r = 0). (Not a coefficient-by-coefficient comparison with a fresh fit: another LAPACK build may
    settle on another, equally good, minimax polynomial.)"""
    text = (CSRC / 'softplus_pieces.h').read_text()
    assert f'kSoftplusPiecesLo = {gen.LO}f, kSoftplusPiecesHi = {gen.HI}f;' in text
    assert f'kSoftplusDegree = {gen.DEGREE};' in text
    coef = gen.read_header().astype(np.float64)
    assert coef.shape == (gen.DEGREE + 1, 32)
    m = np.array(list(gen.PIECES), dtype=np.float64)
    idx = (m.astype(int) + 16) % 32
    np.testing.assert_allclose(coef[0][idx], gen.softplus64(m), rtol=1e-6)
    np.testing.assert_allclose(coef[1][idx], 1.0 / (1.0 + np.exp(-m)), rtol=1e-5)


def scan_softplus(x: torch.Tensor, lanes: bool, grad: bool = False):
    """softplus(x) (and its derivative) as the cpu kernel computes delta; x: (dim, L) float32."""
    dim, length, n = *x.shape, 16
    delta = x[None].clone().requires_grad_(grad)
    u, A = torch.ones(1, dim, length), torch.full((dim, n), -1e30)
    B, C = torch.ones(1, 1, n, length), torch.zeros(1, 1, n, length)
    C[:, :, 0] = 1
    with torch.set_grad_enabled(grad):
        y, _ = cpu_scan_with(lanes, u=u, delta=delta, A=A, B=B, C=C, delta_softplus=True)
    if grad:  # (the backward has one layout: the lane switch does not matter to it)
        y.sum().backward()
    return y[0].detach().double(), delta.grad[0].double() if grad else None


def rel_err(got, want):
    return ((got - want).abs() / want.abs()).max().item()


@needs_cpu
@pytest.mark.parametrize('lanes', [True, False], ids=['lanes', 'states'])
def test_kernel_softplus_over_the_pieces(lanes):
    x = torch.linspace(-16.5, 25.0, 256 * 1024, dtype=torch.float64).float().reshape(256, 1024)
    y, _ = scan_softplus(x, lanes)
    want = torch.nn.functional.softplus(x.double())
    tol = PIECES_TOL if EXT.has_isa('avx512') else EXP_LOG1P_TOL
    assert rel_err(y, want) < tol
    assert torch.equal(y[x > 15.5], x[x > 15.5].double())  # past the pieces: x itself


@needs_cpu
def test_kernel_softplus_below_the_pieces_and_mixed_vectors():
    """Vectors with a lane below -16.5 (or NaN) take the exp + log1p path; their neighbours do not care."""
    x = torch.linspace(-40.0, 10.0, 256 * 256, dtype=torch.float64).float()
    x = x[torch.randperm(x.numel(), generator=torch.Generator().manual_seed(0))].reshape(256, 256)
    x[3, -1] = float('nan')  # (the last step: a NaN state would carry to the channel's later steps)
    y, _ = scan_softplus(x, lanes=True)
    want = torch.nn.functional.softplus(x.double())
    finite = ~torch.isnan(x)
    assert torch.isnan(y[3, -1])
    assert rel_err(y[finite], want[finite]) < EXP_LOG1P_TOL


@needs_cpu
def test_kernel_softplus_derivative():
    x = torch.linspace(-30.0, 30.0, 64 * 256, dtype=torch.float64).float().reshape(64, 256)
    _, dx = scan_softplus(x, lanes=True, grad=True)
    want = torch.where(x.double() > 20, torch.ones((), dtype=torch.float64), torch.sigmoid(x.double()))
    assert rel_err(dx, want) < 1e-6
