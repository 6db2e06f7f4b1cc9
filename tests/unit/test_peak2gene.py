"""Peak-to-gene links: candidate windows, correlations, p-values, null, errors, CLI, real data."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import sparse, stats

import coem.peak2gene as p2g
from coem.errors import CoemInputError
from coem.peak2gene import bh_fdr, candidate_pairs, correlate_pairs, peak_to_gene, r_histogram

REPO = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------- helpers


def _peaks(rows):
    """rows: (chrom, centre, half-width) -> BED-like var with names chrom:start-end."""
    frame = pd.DataFrame(
        [(c, centre - half, centre + half) for c, centre, half in rows], columns=["chrom", "start", "end"]
    )
    frame.index = [f"{c}:{s}-{e}" for c, s, e in frame.itertuples(index=False)]
    return frame


def _mudata(rna_counts, atac_counts, genes_var, peaks_var):
    import anndata as ad
    import mudata

    obs = pd.DataFrame(index=[f"MC{i:05d}" for i in range(rna_counts.shape[0])])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return mudata.MuData({
            "rna": ad.AnnData(sparse.csr_matrix(rna_counts, dtype=np.float32), obs=obs, var=genes_var),
            "atac": ad.AnnData(sparse.csr_matrix(atac_counts, dtype=np.float32), obs=obs.copy(), var=peaks_var),
        })


def _log_cpm(counts):
    """Reference normalisation: count x (1e6 / cell total), then log1p.

    Written as multiplication by the factor, like the module, so that mathematically equal
    values (ties, which Spearman ranks) round identically.
    """
    counts = np.asarray(counts, dtype=np.float64)
    return np.log1p(counts * (1e6 / counts.sum(axis=1, keepdims=True)))


def _random_layout(rng, n_obs=25, n_genes=6, n_peaks=10):
    """Random counts and all gene x peak pairs (positional indices) for exactness tests."""
    rna = rng.poisson(rng.gamma(2.0, 3.0, size=(n_obs, n_genes)))
    atac = rng.poisson(rng.gamma(1.0, 2.0, size=(n_obs, n_peaks)))
    gi, pi = np.meshgrid(np.arange(n_genes), np.arange(n_peaks), indexing="ij")
    pairs = pd.DataFrame({"gene_idx": gi.ravel(), "peak_idx": pi.ravel()})
    return rna, atac, pairs


# ----------------------------------------------------------------------------- candidate windows


W = 1000


@pytest.fixture
def layout():
    genes = pd.DataFrame(
        {"chrom": ["chr1", "chr1", "chr2", "chr1"], "tss": [10_000, 10_000, 50_000, np.nan],
         "strand": ["+", "-", "+", "+"]},
        index=["PLUS", "MINUS", "OTHER", "NOTSS"],
    )
    peaks = _peaks([
        ("chr1", 10_000 - W, 100),      # centre exactly at -window: in
        ("chr1", 10_000 + W, 250),      # centre exactly at +window: in
        ("chr1", 10_000 + W + 1, 100),  # one bp outside: out
        ("chr1", 10_000 - W - 1, 100),  # one bp outside: out
        ("chr1", 10_300, 50),           # inside, downstream for '+'
        ("chr2", 10_000, 100),          # same position, other chromosome: out for chr1 genes
        ("chr2", 50_000 - 20, 10),      # near OTHER
    ])
    return genes, peaks


def test_window_edges_chromosomes_and_strand_sign(layout):
    genes, peaks = layout
    pairs = candidate_pairs(genes, peaks, window=W)
    got = {(g, p): d for g, p, d in pairs[["gene", "peak", "distance"]].itertuples(index=False)}
    expected = {
        ("PLUS", "chr1:8900-9100"): -W, ("PLUS", "chr1:10250-10350"): 300, ("PLUS", "chr1:10750-11250"): W,
        ("MINUS", "chr1:8900-9100"): W, ("MINUS", "chr1:10250-10350"): -300, ("MINUS", "chr1:10750-11250"): -W,
        ("OTHER", "chr2:49970-49990"): -20,
    }
    assert got == expected
    # sorted by gene (var order) then position; positional indices point back into the tables
    assert pairs["gene"].tolist()[:3] == ["PLUS"] * 3
    assert (genes.index[pairs["gene_idx"]] == pairs["gene"]).all()
    assert (peaks.index[pairs["peak_idx"]] == pairs["peak"]).all()
    assert pairs["chrom"].tolist() == ["chr1"] * 6 + ["chr2"]


def test_window_zero_keeps_only_centre_on_tss():
    genes = pd.DataFrame({"chrom": ["chr1"], "tss": [500]}, index=["G"])
    peaks = _peaks([("chr1", 500, 100), ("chr1", 501, 100)])
    pairs = candidate_pairs(genes, peaks, window=0)
    assert pairs["peak"].tolist() == ["chr1:400-600"] and pairs["distance"].tolist() == [0]


def test_nullable_int_tss_and_categorical_chrom_are_read():
    """The real sci-CAR var stores tss as pandas Int64 with <NA> and chrom as a category with NaN."""
    genes = pd.DataFrame(
        {"chrom": pd.Categorical(["chr1", None]), "tss": pd.array([1000, pd.NA], dtype="Int64")}, index=["A", "B"]
    )
    peaks = _peaks([("chr1", 1200, 50)])
    pairs = candidate_pairs(genes, peaks, window=500)
    assert pairs["gene"].tolist() == ["A"] and pairs["distance"].tolist() == [200]


def test_gene_body_anchor_extends_window_over_the_body():
    genes = pd.DataFrame(
        {"chrom": ["chr1"], "tss": [20_000], "strand": ["-"], "start": [5_000], "end": [20_000]}, index=["G"]
    )
    peaks = _peaks([("chr1", 5_000 - W, 10), ("chr1", 5_000 - W - 1, 10), ("chr1", 12_000, 10)])
    body = candidate_pairs(genes, peaks, window=W, anchor="gene_body")
    assert body["peak"].tolist() == ["chr1:3990-4010", "chr1:11990-12010"]
    # distance stays relative to the TSS; '-' strand: peaks below the TSS are downstream (positive)
    assert body["distance"].tolist() == [16_000, 8_000]
    with pytest.raises(CoemInputError, match="no peak lies within"):  # TSS +- 1 kb holds none of them
        candidate_pairs(genes, peaks, window=W, anchor="tss")


def test_gene_body_without_coordinates_falls_back_to_tss(layout):
    genes, peaks = layout
    a = candidate_pairs(genes, peaks, window=W, anchor="gene_body")
    b = candidate_pairs(genes, peaks, window=W, anchor="tss")
    pd.testing.assert_frame_equal(a, b)


def test_searchsorted_matches_brute_force_on_random_layout():
    rng = np.random.default_rng(3)
    genes = pd.DataFrame({
        "chrom": rng.choice(["chr1", "chr2", "chr3"], 60), "tss": rng.integers(1, 2_000_000, 60).astype(float),
        "strand": rng.choice(["+", "-"], 60)}, index=[f"G{i}" for i in range(60)])
    centres = rng.integers(1, 2_000_000, 800)
    peaks = _peaks([(c, int(x), 250) for c, x in zip(rng.choice(["chr1", "chr2", "chr3"], 800), centres)])
    peaks = peaks[~peaks.index.duplicated()]
    pairs = candidate_pairs(genes, peaks, window=50_000)
    centre = (peaks["start"].to_numpy() + peaks["end"].to_numpy()) // 2
    expected = set()
    for gi, (chrom, tss) in enumerate(zip(genes["chrom"], genes["tss"])):
        near = np.flatnonzero((peaks["chrom"].to_numpy() == chrom) & (np.abs(centre - tss) <= 50_000))
        expected |= {(gi, int(p)) for p in near}
    assert set(zip(pairs["gene_idx"], pairs["peak_idx"])) == expected
    assert len(pairs) == len(expected) > 100


# ----------------------------------------------------------------------------- statistics


def test_pearson_r_and_p_equal_scipy():
    rna, atac, pairs = _random_layout(np.random.default_rng(0))
    out = correlate_pairs(rna, sparse.csr_matrix(atac), pairs, method="pearson", n_background=0, normalisation="cpm")
    x, y = _log_cpm(rna), _log_cpm(atac)
    for (g, p), r, pv in zip(pairs[["gene_idx", "peak_idx"]].itertuples(index=False), out["r"], out["p"]):
        ref = stats.pearsonr(x[:, g], y[:, p])
        assert r == pytest.approx(ref.statistic, abs=1e-6)
        assert pv == pytest.approx(ref.pvalue, rel=1e-4, abs=1e-9)
    assert out["z"].isna().all()  # no background: Student's t p-values
    assert out.attrs["test"]["test"].startswith("Student")


def test_spearman_equals_scipy_with_ties():
    rna, atac, pairs = _random_layout(np.random.default_rng(1))
    atac = (atac > 1).astype(float)  # many ties, as binary ATAC has
    out = correlate_pairs(rna, atac, pairs, method="spearman", n_background=0, normalisation="cpm")
    x, y = _log_cpm(rna), _log_cpm(atac)
    for (g, p), r, pv in zip(pairs[["gene_idx", "peak_idx"]].itertuples(index=False), out["r"], out["p"]):
        ref = stats.spearmanr(x[:, g], y[:, p])
        assert r == pytest.approx(ref.statistic, abs=1e-6)
        assert pv == pytest.approx(ref.pvalue, rel=1e-4, abs=1e-9)


@pytest.mark.parametrize("block_values", [30 * 4, 30 * 4 * 5])  # 1 or 5 genes per block / pairs per part
def test_chunking_does_not_change_results(monkeypatch, block_values):
    rna, atac, pairs = _random_layout(np.random.default_rng(2), n_obs=30, n_genes=12, n_peaks=15)
    pairs = pairs.sample(frac=1.0, random_state=0).reset_index(drop=True)  # pairs in any order
    pairs = pairs.assign(chrom=np.where(pairs["gene_idx"] < 6, "chr1", "chr2"))
    peak_chrom = np.where(np.arange(15) < 8, "chr1", "chr2")
    kw = dict(n_background=3, peak_chrom=peak_chrom, seed=4, normalisation="cpm")
    whole = correlate_pairs(rna, atac, pairs, **kw)
    blocks = p2g._gene_blocks(pairs["gene_idx"].to_numpy(), 5)
    assert [len(np.unique(pairs["gene_idx"].to_numpy()[b])) for b in blocks] == [5, 5, 2]  # genes never split
    monkeypatch.setattr(p2g, "_BLOCK_VALUES", block_values)
    monkeypatch.setattr(p2g, "_BG_BLOCK_VALUES", block_values // 4)
    monkeypatch.setattr(p2g, "_MIN_BACKGROUND", 2)
    chunked = correlate_pairs(rna, atac, pairs, **kw)
    for col in ("r", "bg_mean", "bg_sd"):
        np.testing.assert_allclose(chunked[col], whole[col], atol=1e-6)
    x, y = _log_cpm(rna), _log_cpm(atac)
    g, p = pairs.loc[7, ["gene_idx", "peak_idx"]]
    assert chunked.loc[7, "r"] == pytest.approx(np.corrcoef(x[:, g], y[:, p])[0, 1], abs=1e-9)


def test_constant_features_are_skipped_and_counted():
    rna, atac, pairs = _random_layout(np.random.default_rng(5), n_genes=3, n_peaks=4)
    atac[:, 1] = 0  # never open
    rna[:, 2] = 0  # never expressed
    out = correlate_pairs(rna, atac, pairs, n_background=0)
    assert set(out["peak_idx"]) == {0, 2, 3} and set(out["gene_idx"]) == {0, 1}
    test = out.attrs["test"]
    assert test["n_pairs_skipped_constant"] == 12 - 6
    assert test["n_genes_constant"] == 1 and test["n_peaks_constant"] == 1
    np.testing.assert_allclose(out["fdr"], bh_fdr(out["p"].to_numpy()))  # only the 6 tested pairs count


def test_bh_equals_hand_computation():
    p = np.array([0.01, 0.04, 0.03, 0.2, np.nan])
    # m = 4 tests; sorted p 0.01, 0.03, 0.04, 0.2 -> p*m/rank = 0.04, 0.06, 0.0533.., 0.2;
    # running minimum from the largest rank down: 0.04, 0.0533.., 0.0533.., 0.2
    expected = [0.04, 0.16 / 3, 0.16 / 3, 0.2, np.nan]
    np.testing.assert_allclose(bh_fdr(p), expected, rtol=1e-12)
    rng = np.random.default_rng(0)
    q = rng.random(50) ** 3
    np.testing.assert_allclose(bh_fdr(q), stats.false_discovery_control(q, method="bh"), rtol=1e-12)


def test_weighted_bh_and_distance_weights():
    # weights 2, 1, 1, 0 (mean 1): BH on p / w = 0.005, 0.03, 0.04 over the 3 testable pairs
    p = np.array([0.01, 0.03, 0.04, 0.001])
    q = p2g.weighted_bh_fdr(p, np.array([2.0, 1.0, 1.0, 0.0]) * 1.5)  # any scale: renormalised
    w = np.array([2.0, 1.0, 1.0]) / (4.0 / 3.0)
    expected = bh_fdr(p[:3] / w)
    np.testing.assert_allclose(q[:3], expected)
    assert np.isnan(q[3])
    weights = p2g.distance_weights(np.array([0, 10_000, -10_000, 90_000]), 10_000)
    assert weights.mean() == pytest.approx(1.0)
    assert weights[0] == pytest.approx(2 * weights[1]) and weights[1] == weights[2] == pytest.approx(5 * weights[3])
    assert p2g.distance_weights(np.array([5, 7]), 0) is None


def test_median_ratio_library_ignores_a_minority_of_changing_features():
    rng = np.random.default_rng(0)
    base = rng.poisson(50, size=(20, 200)).astype(float) + 1
    spiked = base.copy()
    spiked[10:, :5] *= 40  # five marker genes rise 40-fold in half of the observations
    totals = spiked.sum(axis=1)
    library = p2g.median_ratio_library(spiked)
    assert totals[10:].mean() > 1.5 * totals[:10].mean()  # CPM would shrink every other gene by a third
    assert library[10:].mean() == pytest.approx(library[:10].mean(), rel=0.05)
    with pytest.raises(CoemInputError, match="library sizes must be positive"):
        correlate_pairs(base, base, pd.DataFrame({"gene_idx": [0], "peak_idx": [1]}), rna_library=np.zeros(20))


def _background_layout(seed=0, n_obs=40, n_peaks=3000):
    """One gene on chr1 with 60 cis peaks, 3000 peaks of varied accessibility on chr1-chr3."""
    rng = np.random.default_rng(seed)
    rate = rng.gamma(0.6, 3.0, size=n_peaks)
    atac = rng.poisson(rate[None, :] * rng.uniform(0.5, 1.5, size=(n_obs, 1)))
    rna = rng.poisson(30, size=(n_obs, 3)) + 1
    peak_chrom = rng.choice(["chr1", "chr2", "chr3"], n_peaks)
    width = rng.choice([300, 500, 1000], n_peaks)
    cis = np.flatnonzero(peak_chrom == "chr1")[:60]
    pairs = pd.DataFrame({"gene_idx": 0, "peak_idx": cis, "chrom": "chr1", "distance": np.arange(60) * 1000})
    return rna, atac, pairs, peak_chrom, width


def test_background_is_matched_on_other_chromosomes_and_equals_a_hand_computation():
    rna, atac, pairs, peak_chrom, width = _background_layout()
    tester = p2g.LinkTester(rna, atac, n_background=50, seed=3, peak_chrom=peak_chrom, peak_width=width,
                            normalisation="cpm")
    out = tester.test(pairs)
    features = tester.features
    stratum = tester.pools.stratum
    assert tester.n_strata > 5
    x, y = _log_cpm(rna), _log_cpm(atac)
    for _, row in out.iloc[::7].iterrows():
        peak = int(row["peak_idx"])
        bg = tester.pools.background_of("chr1", int(stratum[peak]))
        assert len(bg) == row["bg_n"] == 50
        assert not np.isin(peak_chrom[bg], ["chr1"]).any()  # other chromosomes only
        assert (stratum[bg] == stratum[peak]).all()  # the tested peak's stratum
        members = stratum == stratum[peak]
        lo, hi = features["mean"][members].min(), features["mean"][members].max()
        assert ((features["mean"][bg] >= lo) & (features["mean"][bg] <= hi)).all()
        # the stratum is a quantile bin of mean accessibility: far narrower than the whole range
        assert hi - lo < 0.5 * (features["mean"].max() - features["mean"].min())
        r_bg = np.array([np.corrcoef(x[:, 0], y[:, j])[0, 1] for j in bg])
        assert row["bg_mean"] == pytest.approx(r_bg.mean(), abs=1e-5)
        assert row["bg_sd"] == pytest.approx(r_bg.std(ddof=1), abs=1e-5)
        assert row["z"] == pytest.approx((row["r"] - r_bg.mean()) / r_bg.std(ddof=1), abs=1e-3)


def test_background_is_seeded():
    rna, atac, pairs, peak_chrom, width = _background_layout()
    kw = dict(n_background=50, peak_chrom=peak_chrom, peak_width=width)
    a, b = correlate_pairs(rna, atac, pairs, seed=0, **kw), correlate_pairs(rna, atac, pairs, seed=0, **kw)
    c = correlate_pairs(rna, atac, pairs, seed=1, **kw)
    pd.testing.assert_frame_equal(a, b)
    assert not np.allclose(a["bg_mean"], c["bg_mean"])


def test_nested_strata_keep_min_size_and_ties_together():
    from coem.background import nested_strata

    rng = np.random.default_rng(0)
    features = pd.DataFrame({"mean": rng.random(5000), "open_fraction": rng.random(5000),
                             "width": np.full(5000, 500.0)})
    strata = nested_strata(features, min_size=200)
    sizes = np.bincount(strata)
    assert len(sizes) == 20 and sizes.min() >= 200  # 10 mean bins x 2 open-fraction bins; width is constant
    for s in range(len(sizes)):  # a stratum is a contiguous range of mean within its mean bin
        assert features["width"][strata == s].nunique() == 1
    tied = pd.DataFrame({"mean": np.repeat([1.0, 2.0], [300, 900])})
    tied_strata = nested_strata(tied, min_size=100)
    assert all(len(np.unique(tied_strata[tied["mean"] == v])) == 1 for v in (1.0, 2.0))


def test_pooled_null_matches_gaussian_on_gaussian_values_and_is_wider_on_heavy_tails():
    from coem.background import PooledNull

    rng = np.random.default_rng(0)
    gauss = PooledNull()
    gauss.add(rng.standard_normal(400_000), np.ones(400_000))
    z = np.array([0.0, 1.0, 2.0, 3.0])
    np.testing.assert_allclose(gauss.p_values(z, "greater"), stats.norm.sf(z), rtol=0.05, atol=2e-4)
    np.testing.assert_allclose(gauss.p_values(z, "two-sided"), 2 * stats.norm.sf(z), rtol=0.05, atol=4e-4)
    heavy = PooledNull()
    heavy.add(rng.standard_t(4, 400_000) / np.sqrt(2.0), np.ones(400_000))  # unit variance, heavy tails
    far = np.array([3.0, 4.0, 6.0, 9.0])
    p_far = heavy.p_values(far, "greater")
    assert (p_far > stats.norm.sf(far)).all()  # a Gaussian p would be far too small there
    assert (np.diff(p_far) < 0).all() and p_far[-1] > 0  # the extrapolated tail keeps falling, never 0
    assert np.isnan(heavy.p_values(np.array([np.nan]), "greater")[0])


def test_permuted_genes_give_no_more_links_than_the_fdr_allows(small_sim):
    """Permuting each gene across metacells breaks every link: calls must stay within the FDR."""
    sim = small_sim
    states = sim.mdata.obs["state"].astype(str).to_numpy()
    agg = _aggregate(sim.mdata, _state_groups(states, 15, seed=0))
    rng = np.random.default_rng(0)
    X = agg.mod["rna"].X.toarray()
    agg.mod["rna"].X = sparse.csr_matrix(np.take_along_axis(X, rng.random(X.shape).argsort(axis=0), axis=0))
    links, summary = peak_to_gene(agg, seed=0)
    n = summary["n_pairs"]
    assert n > 2000
    # with no true link, BH at 0.1 calls nothing in at least 90% of data sets; allow a handful
    assert summary["n_significant"] <= 3
    # and the p-values are close to uniform
    assert 0.02 <= (links["p"] < 0.05).mean() <= 0.08


def test_r_histogram_is_a_distribution():
    h = r_histogram(np.array([-1.0, -0.99, 0.0, 0.5, 1.0, np.nan]), bins=40)
    assert len(h) == 40 and sum(h.values()) == pytest.approx(1.0)
    assert h[-0.975] == pytest.approx(0.4) and h[0.975] == pytest.approx(0.2)


# ----------------------------------------------------------------------------- errors


def test_error_when_no_gene_has_a_tss(layout):
    genes, peaks = layout
    with pytest.raises(CoemInputError, match="no gene has TSS information.*add an annotation column"):
        candidate_pairs(genes.assign(tss=np.nan), peaks)
    with pytest.raises(CoemInputError, match="no gene has TSS information.*'tss'"):
        candidate_pairs(genes.drop(columns="tss"), peaks)


def test_error_when_no_peak_is_near_names_window_and_chrom_style(layout):
    genes, peaks = layout
    with pytest.raises(CoemInputError, match=r"within 1000 bp.*\['1', '2'\].*\['chr1', 'chr2'\].*'chr1' vs '1'"):
        candidate_pairs(genes.assign(chrom=genes["chrom"].str.replace("chr", "")), peaks, window=W)
    far = _peaks([("chr1", 900_000, 100)])
    with pytest.raises(CoemInputError, match="within 1000 bp") as err:
        candidate_pairs(genes, far, window=W)
    assert "no chromosome name is shared" not in str(err.value)


def test_error_with_fewer_than_three_observations(layout):
    genes, peaks = layout
    mdata = _mudata(np.ones((2, 4)), np.ones((2, 7)), genes, peaks)
    with pytest.raises(CoemInputError, match="at least 3 observations.*got 2"):
        peak_to_gene(mdata, window=W)
    rna, atac, pairs = _random_layout(np.random.default_rng(0), n_obs=2)
    with pytest.raises(CoemInputError, match="at least 3"):
        correlate_pairs(rna, atac, pairs)


# ----------------------------------------------------------------------------- planted links


def _aggregate(mdata, labels):
    """Sum raw counts per group with coem.aggregate (metacell ids MC00001, ...)."""
    from coem.aggregate import aggregate_metacells

    codes = np.unique(labels, return_inverse=True)[1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # mudata's pull_on_update notice
        mdata.obs["metacell"] = [f"MC{c + 1:05d}" for c in codes]
        return aggregate_metacells(mdata, key="metacell")


def _state_groups(states, size, seed):
    """Metacells by construction: cells of one state split at random into groups of ~size."""
    rng = np.random.default_rng(seed)
    labels = np.empty(len(states), dtype=object)
    for state in pd.unique(states):
        idx = rng.permutation(np.flatnonzero(states == state))
        for j, part in enumerate(np.array_split(idx, max(1, round(len(idx) / size)))):
            labels[part] = f"{state}_{j}"
    return labels.astype(str)


def test_planted_links_rank_at_the_top(small_sim):
    """Planted links that vary between states must be strongly enriched among the top pairs.

    Candidates within +-100 kb hold every planted link plus many unlinked pairs; a ranking
    that ignored the data would find planted pairs at the base rate. Groups of ~25 cells of
    one state make linked peaks co-vary with their gene. Links of the simulator's
    'housekeeping' programme are constant across states, so no correlation can find them
    (after CPM they even come out slightly negative): they are left out of the ranking, being
    neither findable links nor true negatives. Among the top pairs (as many as there are
    findable links) precision must be >= 3x the base rate -- a loose bound, because unlinked
    peaks of the same programme near a gene co-vary too (measured: about 10x).
    """
    sim = small_sim
    states = sim.mdata.obs["state"].astype(str).to_numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # mudata's pull_on_update notice
        cells = sim.mdata.copy()  # the session fixture stays untouched
    agg = _aggregate(cells, _state_groups(states, 25, seed=0))
    links, summary = peak_to_gene(agg, window=100_000, seed=0)
    planted = sim.links.assign(findable=sim.links.get("programme", "any") != "housekeeping")
    links = links.merge(planted[["gene", "peak", "findable"]], on=["gene", "peak"], how="left")
    assert links["findable"].notna().sum() >= 0.95 * len(planted)  # planted links lie within the window
    planted_pair = links["findable"].notna()
    ranked = links[~planted_pair | links["findable"].eq(True)]  # drop only unfindable planted links
    is_planted = ranked["findable"].notna().to_numpy()
    base_rate = is_planted.mean()
    n_top = int(is_planted.sum())
    top = np.argsort(-np.nan_to_num(ranked["r"].to_numpy(), nan=-2.0), kind="stable")[:n_top]
    precision = is_planted[top].mean()
    print(f"findable planted links: {n_top} of {len(ranked)} candidates (base rate {base_rate:.3f}); "
          f"precision@{n_top} {precision:.3f} ({precision / base_rate:.1f}x)")
    assert n_top > 50 and precision >= 3 * base_rate
    # findable links are positive: their median r is well above the unlinked pairs'
    assert ranked.loc[is_planted, "r"].median() > ranked.loc[~is_planted, "r"].median() + 0.3
    # calibrated against the truth: few significant links are not planted, and many are found
    called = links[(links["fdr"] <= 0.1) & (links["r"] >= 0.1)]
    not_planted = called["findable"].isna().mean()
    recall = called["findable"].eq(True).sum() / n_top
    print(f"significant at FDR 0.1: {len(called)}, not planted {not_planted:.3f}, recall {recall:.3f}")
    assert not_planted <= 0.1 and recall >= 0.3


# ----------------------------------------------------------------------------- CLI


def _small_aggregated(rng):
    genes = pd.DataFrame({"chrom": ["chr1", "chr1", "chr2", "chr2"], "tss": [10_000, 60_000, 10_000, 90_000],
                          "strand": ["+", "-", "+", "-"]}, index=["GA", "GB", "GC", "GD"])
    peaks = _peaks([(c, x, 250) for c in ("chr1", "chr2") for x in range(2_000, 120_000, 4_000)])
    return genes, peaks


def test_cli_writes_links_significant_bedpe_summary_multiqc_and_versions(tmp_path, monkeypatch):
    from coem.cli.peak2gene import main

    rng = np.random.default_rng(0)
    genes, peaks = _small_aggregated(rng)
    genes["strand"] = ["+", "-", "+", "-"]
    cells = _mudata(rng.poisson(3, (300, 4)), rng.poisson(0.3, (300, len(peaks))), genes, peaks)
    agg_rna = rng.poisson(60, (12, 4))
    agg_atac = rng.poisson(6, (12, len(peaks)))
    linked = peaks.index.get_loc("chr1:9750-10250")  # GA's promoter peak follows GA
    agg_atac[:, linked] = agg_rna[:, 0] // 4
    agg = _mudata(agg_rna, agg_atac, genes, peaks)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        agg.write(tmp_path / "S1.aggregated.h5mu")
        cells.write(tmp_path / "S1.metacells.h5mu")
    pd.DataFrame({"gene": ["GA"], "peak": ["chr1:9750-10250"]}).to_csv(tmp_path / "known.tsv", sep="\t", index=False)
    monkeypatch.chdir(tmp_path)
    rc = main(["--sample", "S1", "--input", "S1.aggregated.h5mu", "--cells", "S1.metacells.h5mu",
               "--max-cells", "100", "--window", "30000", "--prefix", "P", "--n-background", "10",
               "--known-links", "known.tsv", "--fdr", "0.2"])
    assert rc == 0
    links = pd.read_csv("P.peak2gene.tsv", sep="\t")
    assert list(links.columns) == ["gene", "peak", "distance", "chrom", "r", "z", "p", "fdr", "bg_mean", "bg_sd",
                                   "bg_n", "weight"]
    assert links.equals(links.sort_values(["gene", "distance"]).reset_index(drop=True))
    centre = (peaks["start"] + peaks["end"]).to_numpy() // 2
    expected = sum(int(((peaks["chrom"] == c).to_numpy() & (np.abs(centre - t) <= 30_000)).sum())
                   for c, t in zip(genes["chrom"], genes["tss"]))
    assert (links["distance"].abs() <= 30_000).all() and len(links) == expected == 51
    assert links["bg_n"].between(5, 10).all() and links["z"].notna().all()  # 60 peaks: small strata
    significant = pd.read_csv("P.peak2gene_significant.tsv", sep="\t")
    assert ((significant["fdr"] <= 0.2) & (significant["r"] >= 0.1)).all()
    assert "chr1:9750-10250" in set(significant["peak"])
    bedpe = pd.read_csv("P.peak2gene_significant.bedpe", sep="\t", header=None)
    assert len(bedpe) == len(significant) and bedpe.shape[1] == 14
    row = bedpe[bedpe[6] == "GA"].iloc[0]
    assert list(row[:10]) == ["chr1", 9750, 10250, "chr1", 9999, 10000, "GA", row[7], ".", "+"]
    summary = json.loads(Path("P.peak2gene_summary.json").read_text())
    assert summary["metacells"]["n_pairs"] == 51 and summary["metacells"]["n_obs"] == 12
    assert summary["metacells"]["n_significant"] == len(significant)
    assert summary["single_cells"]["n_obs"] == 100
    assert summary["known_links"]["n_known_tested"] == 1 and summary["known_links"]["recall"] == 1.0
    assert summary["record"]["params"]["window"] == 30000 and summary["record"]["seed"] == 0
    table = json.loads(Path("P_peak2gene_summary_mqc.json").read_text())
    assert table["id"] == "coem_peak2gene_summary" and table["plot_type"] == "table"
    row = table["data"]["S1"]
    assert row["pairs"] == 51 and row["genes"] == 4 and row["significant"] == len(significant)
    assert row["fraction_negative"] == pytest.approx((links["r"] < 0).mean())
    hist = json.loads(Path("P_peak2gene_r_mqc.json").read_text())
    assert hist["id"] == "coem_peak2gene_r" and hist["plot_type"] == "linegraph"
    assert set(hist["data"]) == {"S1 (tested pairs)", "S1 (matched background)", "S1 (single cells)"}
    for series in hist["data"].values():  # [x, y] pairs in increasing x: MultiQC draws them in order
        x, y = np.array(series).T
        assert y.sum() == pytest.approx(1.0) and len(series) == 40 and (np.diff(x) > 0).all()
    distance = json.loads(Path("P_peak2gene_distance_mqc.json").read_text())
    x, y = np.array(distance["data"]["S1"]).T
    assert y.sum() == len(significant) and (np.diff(x) > 0).all() and x[0] < 0 < x[-1]
    truth = json.loads(Path("P_peak2gene_truth_mqc.json").read_text())
    assert truth["data"]["S1"]["recall"] == 1.0
    assert "COEM_PEAK2GENE" in Path("versions.yml").read_text()


def test_cli_gc_from_fasta(tmp_path, monkeypatch):
    from coem.cli.peak2gene import main

    rng = np.random.default_rng(1)
    genes, peaks = _small_aggregated(rng)
    agg = _mudata(rng.poisson(60, (12, 4)), rng.poisson(6, (12, len(peaks))), genes, peaks)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        agg.write(tmp_path / "S1.aggregated.h5mu")
    genome = "".join(rng.choice(list("ACGT"), 130_000))
    (tmp_path / "genome.fa").write_text(">chr1\n" + genome + "\n>chr2\n" + genome[::-1] + "\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COEM_WARNINGS_FILE", str(tmp_path / "coem_warnings.txt"))
    assert main(["--sample", "S1", "--input", "S1.aggregated.h5mu", "--fasta", "genome.fa", "--n-background", "5"]) == 0
    sample, step, message = (tmp_path / "coem_warnings.txt").read_text().rstrip("\n").split("\t")
    assert (sample, step) == ("S1", "peak2gene")  # 12 metacells: the end-of-run summary says links are weak
    assert message.startswith("peak-to-gene ran on 12 metacells: correlations over so few have little power")
    summary = json.loads(Path("S1.peak2gene_summary.json").read_text())
    assert summary["metacells"]["gc_matched"] is True and summary["record"]["timings"]["gc_s"] >= 0
    from coem.cli._common import run_cli
    (tmp_path / "other.fa").write_text(">1\nACGT\n")
    assert run_cli(main, ["--sample", "S1", "--input", "S1.aggregated.h5mu", "--fasta", "other.fa"]) == 2


def test_cli_bad_input_exits_2_with_message(tmp_path, monkeypatch, capsys):
    from coem.cli._common import run_cli
    from coem.cli.peak2gene import main

    rng = np.random.default_rng(0)
    genes, peaks = _small_aggregated(rng)
    agg = _mudata(rng.poisson(60, (2, 4)), rng.poisson(6, (2, len(peaks))), genes, peaks)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        agg.write(tmp_path / "S1.aggregated.h5mu")
    monkeypatch.chdir(tmp_path)
    assert run_cli(main, ["--sample", "S1", "--input", "S1.aggregated.h5mu"]) == 2
    err = capsys.readouterr().err
    assert "ERROR: sample 'S1', file 'S1.aggregated.h5mu'" in err and "at least 3 observations" in err
    assert run_cli(main, ["--sample", "S1", "--input", "missing.h5mu"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not Path("S1.peak2gene.tsv").exists()


def test_bin_shim_is_executable():
    shim = REPO / "bin" / "coem_peak2gene.py"
    assert shim.stat().st_mode & 0o111
    assert "from coem.cli.peak2gene import main" in shim.read_text()


# ----------------------------------------------------------------------------- real data


@pytest.fixture
def scicar(shared_data):
    path = shared_data / "scicar_a549" / "scicar_a549.h5mu"
    if not path.is_file():
        pytest.skip(f"real data not available: {path} (see ../shared/data/README.md)")
    import mudata

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return mudata.read_h5mu(path)


def _scicar_metacells(mdata, seed=0):
    """~75 cells per metacell: coem's spectral metacells on the PCA + LSI embedding."""
    from coem.embed import pca_lsi_embedding
    from coem.metacells import SpectralMetacells

    n_groups = round(mdata.n_obs / 75)
    embedding, _ = pca_lsi_embedding(mdata, n_pcs=20, n_lsi=20, seed=seed)
    return SpectralMetacells(n_metacells=n_groups, random_state=seed).fit(embedding).labels_, "coem spectral metacells"


@pytest.mark.realdata
def test_scicar_fkbp5_links_to_a_nearby_peak(scicar):
    """FKBP5, a glucocorticoid target, and its promoter peaks both rise with dexamethasone.

    Metacells of ~75 cells must show it: FKBP5's best peak within +-100 kb correlates with
    r >= 0.5 (measured 0.74 with coem's spectral metacells on the PCA+LSI embedding).
    """
    labels, how = _scicar_metacells(scicar)
    agg = _aggregate(scicar, labels)
    links, summary = peak_to_gene(agg, window=100_000, seed=0)
    fkbp5 = links[links["gene"] == "FKBP5"]
    best = fkbp5["r"].max()
    print(f"{how}: FKBP5 {len(fkbp5)} peaks, best r {best:.3f}; fraction negative "
          f"{summary['fraction_negative']:.3f}, median r {summary['median_r']:.3f}, "
          f"background median r {summary['background_median_r']:.3f}")
    assert len(fkbp5) == 13  # the README's count of peaks within +-100 kb
    assert best >= 0.5
    assert summary["n_genes"] > 1000


@pytest.mark.parametrize("method", ["pearson", "spearman"])
def test_sparse_pool_for_many_observations_equals_the_dense_pool(monkeypatch, method):
    """Single cells keep the background pool sparse; the correlations must not change."""
    rna, atac, pairs, peak_chrom, width = _background_layout(seed=2)
    atac = np.where(np.random.default_rng(0).random(atac.shape) < 0.5, 0, atac)  # sparse, with ties
    kw = dict(method=method, n_background=50, seed=1, peak_chrom=peak_chrom, peak_width=width)
    dense = correlate_pairs(rna, atac, pairs, **kw)
    monkeypatch.setattr(p2g, "_DENSE_POOL_VALUES", 0)
    sparse_pool = correlate_pairs(rna, atac, pairs, **kw)
    for col in ("r", "bg_mean", "bg_sd", "z"):
        np.testing.assert_allclose(sparse_pool[col], dense[col], atol=2e-5)
