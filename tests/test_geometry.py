"""Hidden-state geometry: PCA against scikit-learn, stable projections across layers, nearest tokens,
and the GeometryView's bytes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nbinspect.geometry import nearest_tokens, pca, procrustes, project_layers, standardise


def _cloud(m=200, d=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    scales = torch.linspace(5, 0.1, d)
    return torch.randn(m, d, generator=g) * scales + torch.randn(d, generator=g)


def test_pca_matches_sklearn_up_to_sign():
    from sklearn.decomposition import PCA

    x = _cloud()
    scores, components, explained = pca(x, 3)
    ref = PCA(3, svd_solver="full").fit(x.numpy())
    for i in range(3):
        c, r = components[:, i].numpy(), ref.components_[i]
        sign = np.sign(c @ r)
        np.testing.assert_allclose(c, sign * r, atol=1e-4)
        np.testing.assert_allclose(scores[:, i].numpy(), sign * ref.transform(x.numpy())[:, i], atol=1e-3)
    np.testing.assert_allclose(explained.numpy(), ref.explained_variance_ratio_, rtol=1e-3)


def test_pca_signs_are_fixed_across_refits():
    x = _cloud()
    a = pca(x, 2)[1]
    b = pca(x[torch.randperm(len(x))], 2)[1]
    torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


def test_stable_pca_uses_one_basis_for_all_layers():
    base = _cloud(50, 16)
    # Layer 1 is layer 0 scaled up 100x, each token by its own factor: the same directions, the same picture.
    factors = torch.linspace(1, 300, 50)[:, None]
    layers = [base, base * factors, _cloud(50, 16, seed=1)]
    p = project_layers(layers, "pca")
    assert p.coords.shape == (3, 50, 2) and p.coords.dtype == np.float32
    np.testing.assert_allclose(p.coords[0], p.coords[1], atol=1e-4)
    assert not np.allclose(p.coords[0], p.coords[2], atol=1e-2)
    # The shared basis is the PCA of all standardised layers together.
    stacked = torch.cat([standardise(h) for h in layers])
    _, comps, _ = pca(stacked, 2, mean=torch.zeros(1, 16))
    np.testing.assert_allclose(p.coords[2], (standardise(layers[2]) @ comps).numpy(), atol=1e-4)


def test_procrustes_undoes_rotation_reflection_scale_shift():
    rng = np.random.default_rng(0)
    target = rng.normal(size=(30, 2)).astype(np.float32)
    theta = 0.7
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]]) @ np.diag([1, -1])
    moved = target @ rot * 3.5 + np.array([4.0, -2.0])
    np.testing.assert_allclose(procrustes(moved, target), target, atol=1e-4)


def test_tsne_layers_are_aligned():
    method = "tsne"
    g = torch.Generator().manual_seed(0)
    centres = 6 * torch.randn(4, 16, generator=g)
    base = centres.repeat_interleave(10, 0) + torch.randn(40, 16, generator=g)  # four clusters
    p = project_layers([base, base * 10, base + 0.01 * _cloud(40, 16, seed=3)], method)
    assert p.coords.shape == (3, 40, 2) and np.isfinite(p.coords).all()
    spread = np.abs(p.coords[0] - p.coords[0].mean(0)).mean()
    # Same data (up to scale) at layers 0 and 1: after alignment the layouts nearly coincide, and
    # each cluster stays where it was.
    assert np.abs(p.coords[1] - p.coords[0]).mean() < 0.25 * spread
    for layer in (1, 2):
        moved = [np.linalg.norm(p.coords[layer][i * 10:(i + 1) * 10].mean(0) - p.coords[0][i * 10:(i + 1) * 10].mean(0)) for i in range(4)]
        assert max(moved) < 0.5 * spread, moved
    with pytest.raises(ValueError, match="at least"):
        project_layers([base[:5]], method)


def test_umap_projects_every_layer():
    """UMAP's stochastic layout is started from the previous layer's and aligned to it, but its optimiser
    moves clusters about more than t-SNE's (measured: clusters moved ~1x the spread on this data), so only
    shape and finiteness are checked here."""
    base = _cloud(20, 8)
    p = project_layers([base, base * 2], "umap")
    assert p.coords.shape == (2, 20, 2) and np.isfinite(p.coords).all() and p.method == "umap"
    with pytest.raises(ValueError, match="at least"):
        project_layers([base[:5]], "umap")


def test_nearest_tokens_by_cosine():
    w = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [-1.0, 0.0], [2.0, 0.05]])
    ids, sims = nearest_tokens(w, 0, k=3)
    assert ids.tolist() == [4, 1, 2]
    assert sims[0] == pytest.approx(float(torch.nn.functional.cosine_similarity(w[0], w[4], dim=0)))
    with pytest.raises(IndexError, match="out of range"):
        nearest_tokens(w, 9)


# --- the view -----------------------------------------------------------------------------------------
def _view(**kw):
    import nbinspect
    from nbinspect.geometry import geometry
    from tiny_models import CharTokenizer, tiny

    model = tiny("llama")
    return model, geometry(model, CharTokenizer(), ["hello world, hello there", "another text"], labels=["a", "b"], **kw)


def test_view_sends_every_layer_as_float32_bytes():
    model, v = _view()
    L, n = 3, 24 + 12
    assert v.n_points == n and v.n_main == 24 and len(v.other_tokens) == 12
    coords = np.frombuffer(v.coords, "<f4").reshape(L, n, 2)
    expected = project_layers(v.hidden(), "pca").coords
    np.testing.assert_array_equal(coords, expected)
    # The projection is of the trace's own residuals: layer 1's main-text points are record.residual[1].after.
    torch.testing.assert_close(v.hidden()[1][:24], v.trace.record.residual[1].after[0])
    assert v.color_by == "label" and v.color_kind == "categorical"
    assert np.frombuffer(v.color_values, "<i4").tolist() == [0] * 24 + [1] * 12
    assert len(v.explained) == 2 and 0 < v.explained[1] <= v.explained[0] < 1


def test_view_colours_nearest_and_selection():
    model, v = _view()
    v.color_by = "position"
    values = np.frombuffer(v.color_values, "<f4")
    assert values[0] == 0 and values[23] == 1 and values[24] == 0 and values[-1] == 1
    v.color_by = "neuron"
    v.selection.layer, v.selection.neuron = 2, 7
    acts = v.trace.record.neurons[2][0, :, 7].float()
    got = np.frombuffer(v.color_values, "<f4")[:24]
    peak = max(float(acts.abs().max()), float(v._others[0].record.neurons[2][0, :, 7].abs().max()))
    np.testing.assert_allclose(got, (acts / peak).numpy(), atol=1e-6)
    assert v.color_of == "neuron,2,7"
    v.token = 4  # the mirrored trait and the shared selection move together
    assert v.selection.token == 4 and v.nearest_of == 4 and len(v.nearest) == 10
    ids, sims = nearest_tokens(model.get_input_embeddings().weight, int(v.trace.input_ids[0, 4]), 10)
    np.testing.assert_allclose(np.frombuffer(v.nearest_cosines, "<f4"), sims.numpy(), atol=1e-6)
    with pytest.raises(Exception, match="not known"):
        v.method = "mds"


def test_view_reports_projection_errors_instead_of_failing():
    from nbinspect.geometry import geometry
    from tiny_models import CharTokenizer, tiny

    v = geometry(tiny("gpt2"), CharTokenizer(), "short", method="tsne")
    assert "at least" in v.error
    v.method = "pca"
    assert v.error == "" and v.n_points == 5


# --- in the browser ---------------------------------------------------------------------------------------
GEOMETRY_NB = {
    "cells": [{"cell_type": "code", "execution_count": None, "id": "geo", "metadata": {}, "outputs": [], "source": (
        "import sys, numpy as np\n"
        f"sys.path.insert(0, {str(__import__('pathlib').Path(__file__).resolve().parent)!r})\n"
        "import nbinspect\n"
        "from tiny_models import tiny, CharTokenizer\n"
        "model = tiny('llama')\n"
        "view = nbinspect.geometry(model, CharTokenizer(), ['hello world, hello there', 'another text'], labels=['a', 'b'])\n"
        "sel = view.selection\n"
        "view"
    )}],
    "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
    "nbformat": 4, "nbformat_minor": 5,
}


@pytest.mark.browser
def test_geometry_view_in_jupyterlab_click_selects_the_token(artifacts):
    import json

    from lab import chromium, jupyterlab, kernel, open_notebook, run_all, wait_idle_after_run

    def py(page, code):
        out = kernel(page, code)
        assert "ERROR" not in out, out
        return out.strip()

    with jupyterlab({"geometry_test.ipynb": json.dumps(GEOMETRY_NB)}) as (url, _), chromium() as browser:
        page = open_notebook(browser, url, "geometry_test.ipynb")
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        run_all(page)
        wait_idle_after_run(page)
        page.wait_for_function("() => { const r = document.querySelector('.nbi-geo'); return r && r.dataset.painted; }", timeout=60_000)
        plot = page.locator(".nbi-geo canvas.nbi-plot")
        # Ink: the points are drawn (white background otherwise).
        ink = plot.evaluate("""(c) => { const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            let k = 0; for (let i = 0; i < d.length; i += 4) if (d[i] + d[i + 1] + d[i + 2] < 600) k++; return k; }""")
        assert ink > 36 * 4, ink
        # Click a point of the main text that no other point is within the click radius of: the kernel's
        # selection follows, and the nearest-token list arrives.
        t = plot.evaluate("(c) => [+c.dataset.sx, +c.dataset.ox, +c.dataset.oy]")
        found = py(page, (
            "c = np.frombuffer(view.coords, '<f4').reshape(3, -1, 2)[view.layer]\n"
            f"X, Y = c[:, 0] * {t[0]} + {t[1]}, {t[2]} - c[:, 1] * {t[0]}\n"
            "d = np.hypot(X[:, None] - X[None], Y[:, None] - Y[None])\n"
            "alone = [i for i in range(view.n_main) if (d[i] < 7).sum() == 1 and 8 < X[i] < 550 and 8 < Y[i] < 430]\n"
            "print(alone[0], X[alone[0]], Y[alone[0]])"
        ))
        token, x, y = found.split()
        plot.click(position={"x": float(x), "y": float(y)})
        for _ in range(100):
            if py(page, "print(sel.token)") == token:
                break
            page.wait_for_timeout(100)
        assert py(page, "print(sel.token, view.nearest_of, len(view.nearest))") == f"{token} {token} 10"
        # Python moves the layer: the browser redraws that layer.
        py(page, "sel.layer = 2")
        page.wait_for_function("() => document.querySelector('.nbi-geo').dataset.layer === '2'", timeout=30_000)
        page.locator(".nbi-geo").screenshot(path=str(artifacts / "geometry_view.png"))
        assert not errors, errors
