"""A start guess ``v0`` for Lanczos: the same eigenvalues as a random start (float64
``eigvalsh`` truth), every copy of a repeated eigenvalue, fewer products when the guess
is good, no miss when it is orthogonal to the wanted eigenvector, and clear errors."""

import numpy as np
import pytest
import torch

import curvature as cv


def _operator(eigs, seed=0):
    n = len(eigs)
    gen = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    A = Q @ torch.diag(torch.as_tensor(eigs, dtype=torch.float64)) @ Q.T
    return cv.DenseOperator(A), A, Q


@pytest.mark.parametrize("seed", range(5))
def test_a_close_guess_saves_products_and_gives_the_same_top_eigenvalue(seed):
    # a slowly decaying spectrum: a random start needs many steps for the top pair
    eigs = np.concatenate([[1.0, 0.97], np.linspace(0.9, -0.2, 298)])
    op, A, Q = _operator(eigs, seed)
    truth = np.linalg.eigvalsh(A.numpy())[-1]
    plain = cv.eigenvalues(op, 1, tol=1e-8, seed=seed)
    noise = torch.randn(len(eigs), generator=torch.Generator().manual_seed(99),
                        dtype=torch.float64)
    guess = Q[:, 0] + 0.3 * noise / noise.norm()  # mostly along the top eigenvector
    warm = cv.eigenvalues(op, 1, tol=1e-8, seed=seed, v0=guess)
    assert plain.converged and warm.converged
    assert abs(float(warm.values[0]) - truth) <= 1e-7 * abs(truth)
    assert warm.num_matvecs < plain.num_matvecs


def test_a_guess_orthogonal_to_the_top_eigenvector_still_finds_it():
    eigs = np.concatenate([[2.0, 1.0], np.linspace(0.5, -1.0, 98)])
    op, A, Q = _operator(eigs)
    res = cv.eigenvalues(op, 1, tol=1e-8, seed=0, v0=Q[:, 1])  # the second eigenvector
    assert res.converged
    assert float(res.values[0]) == pytest.approx(2.0, rel=1e-8)


def test_every_copy_of_a_repeated_eigenvalue_with_a_guess():
    eigs = np.concatenate([[3.0, 3.0, 3.0, 2.0], np.linspace(-1.0, 1.0, 96)])
    op, A, Q = _operator(eigs)
    truth = np.sort(np.linalg.eigvalsh(A.numpy()))[::-1][:4]
    res = cv.eigenvalues(op, 4, tol=1e-8, seed=1, v0=Q[:, :2])
    assert res.converged
    np.testing.assert_allclose(res.values.numpy(), truth, rtol=1e-8)


def test_bad_guesses_are_refused():
    op, _, _ = _operator(np.linspace(-1, 1, 20))
    with pytest.raises(ValueError, match="shape"):
        cv.eigenvalues(op, 1, v0=torch.ones(19, dtype=torch.float64))
    with pytest.raises(ValueError, match="nonzero"):
        cv.eigenvalues(op, 1, v0=torch.zeros(20, dtype=torch.float64))
    with pytest.raises(ValueError, match="columns"):
        cv.eigenvalues(op, 1, v0=torch.ones(20, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="lanczos"):
        cv.eigenvalues(op, 1, method="power", v0=torch.ones(20, dtype=torch.float64))
    with pytest.raises(TypeError, match="Tensor"):
        cv.eigenvalues(op, 1, v0=np.ones(20))
