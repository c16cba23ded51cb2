from __future__ import annotations

import os
import re
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from fedarches.client.query import LowGeneOverlapWarning, match_genes, prepare_query
from fedarches.shared import crypto
from fedarches.shared.bundle import ReferenceBundle, write_bundle
from fedarches.shared.counts import get_counts
from fedarches.shared.errors import GeneOverlapError, QueryDataError


@pytest.fixture
def toy_bundle(tmp_path, toy_contents, keys) -> ReferenceBundle:
    return ReferenceBundle.open(write_bundle(tmp_path / "b", toy_contents, crypto.load_private_key(keys[0])), keys[1])


def _query(var_names, n=4, **var_columns) -> ad.AnnData:
    x = np.arange(n * len(var_names), dtype=np.float32).reshape(n, len(var_names))
    return ad.AnnData(
        X=x,
        var=pd.DataFrame(var_columns, index=var_names),
        obs=pd.DataFrame({"b": ["x"] * n}, index=[f"c{i}" for i in range(n)]),
    )


def test_aligns_and_zero_fills(toy_bundle) -> None:
    query = _query(["ENSG00000000003.7", "OTHER", "ENSG00000000001"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        prepared = prepare_query(query, toy_bundle)
    assert any(issubclass(w.category, LowGeneOverlapWarning) for w in caught)  # 2/3 < 80 %
    dense = prepared.counts.toarray()
    np.testing.assert_array_equal(dense[:, 0], query.X[:, 2])  # ENSG..01
    np.testing.assert_array_equal(dense[:, 1], 0)  # ENSG..02 missing -> zeros
    np.testing.assert_array_equal(dense[:, 2], query.X[:, 0])  # ENSG..03, version suffix ignored
    assert prepared.gene_overlap.n_present == 2
    assert list(prepared.batches) == ["query"] * 4


def test_matches_symbols_in_var_names_or_columns(toy_bundle) -> None:
    overlap, _ = match_genes(_query(["AAA", "BBB", "CCC"]), toy_bundle.genes)
    assert (overlap.n_present, overlap.reference_column) == (3, "gene_symbol")
    overlap, positions = match_genes(
        _query(["x", "y", "z"], gene_ids=["ENSG00000000002", "-", "ENSG00000000001"]), toy_bundle.genes
    )
    assert overlap.query_source == "var['gene_ids']"
    assert positions.tolist() == [2, 0, -1]


def test_low_overlap_refused(toy_bundle) -> None:
    with pytest.raises(GeneOverlapError, match="1/3 reference genes"):
        prepare_query(_query(["AAA", "nope", "nada"]), toy_bundle)


def test_batches(toy_bundle) -> None:
    query = _query(["AAA", "BBB", "CCC"])
    assert set(prepare_query(query, toy_bundle, batch_key="b", batch_prefix="lab").batches) == {"lab/x"}
    with pytest.raises(QueryDataError, match="no column 'missing'"):
        prepare_query(query, toy_bundle, batch_key="missing")
    query.obs.loc["c1", "b"] = np.nan
    with pytest.raises(QueryDataError, match="missing \\(NaN\\) for 1 of 4"):
        prepare_query(query, toy_bundle, batch_key="b")
    with pytest.raises(QueryDataError, match="name of a reference batch"):
        prepare_query(_query(["AAA", "BBB", "CCC"]), toy_bundle, batch_prefix="b1")


def test_zero_cells_and_duplicates(toy_bundle) -> None:
    with pytest.raises(QueryDataError, match="zero cells"):
        prepare_query(_query(["AAA", "BBB", "CCC"])[:0], toy_bundle)
    query = _query(["AAA", "BBB", "CCC"])
    query.var_names = ["AAA", "AAA", "CCC"]
    with pytest.raises(QueryDataError, match="duplicate gene names"):
        prepare_query(query, toy_bundle)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ([0.5, 1.2], "non-integer"),
        ([-1.0, 2.0], "negative"),
        ([np.nan, 1.0], "NaN or infinite"),
        ([np.inf, 1.0], "NaN or infinite"),
    ],
)
def test_counts_refused(values, message) -> None:
    adata = ad.AnnData(X=sp.csr_matrix(np.array([values], dtype=np.float32)))
    with pytest.raises(QueryDataError, match=message):
        get_counts(adata)


def test_counts_prefers_counts_layer() -> None:
    adata = ad.AnnData(
        X=np.log1p(np.array([[1.0, 3.0]], dtype=np.float32)),
        layers={"counts": np.array([[1.0, 3.0]], dtype=np.float32)},
    )
    counts, source = get_counts(adata)
    assert source == "layers['counts']"
    assert counts.toarray().tolist() == [[1.0, 3.0]]
    with pytest.raises(QueryDataError, match="layer 'raw' not found"):
        get_counts(adata, "raw")


def test_a_matrix_without_counts_is_refused() -> None:
    from fedarches.client.query import validate_query

    empty = ad.AnnData(X=sp.csr_matrix((252, 3), dtype=np.float32))
    with pytest.raises(QueryDataError, match="no counts at all: every one of the 252 cells is empty"):
        validate_query(empty)


def test_counts_only_outside_the_reference_genes_are_refused(toy_bundle) -> None:
    query = _query(["ENSG00000000001", "ENSG00000000002", "OTHER"])
    query.X[:, :2] = 0
    with pytest.raises(GeneOverlapError, match="none of the 4 cells has a count in the reference's 2 genes"):
        prepare_query(query, toy_bundle)


def test_cells_without_counts_are_reported(toy_bundle) -> None:
    from fedarches.client.query import EmptyCellsWarning

    query = _query(["ENSG00000000001", "ENSG00000000002", "ENSG00000000003"])
    query.X[:2] = 0
    with pytest.warns(EmptyCellsWarning, match="2 of 4 cells have no counts"):
        prepared = prepare_query(query, toy_bundle)
    assert prepared.empty_cells.tolist() == [True, True, False, False]


@pytest.mark.parametrize(
    ("make", "kind"),
    [
        (lambda p: p.mkdir(), "is a directory"),
        (lambda p: os.mkfifo(p), "is a FIFO (named pipe)"),
        (lambda p: p.symlink_to("/dev/null"), "is a symbolic link to a character device (/dev/null)"),
        (lambda p: p.symlink_to(p.parent), "is a symbolic link to a directory"),
        (lambda p: p.symlink_to(p.parent / "gone.h5ad"), "is a broken symbolic link"),
        (lambda p: None, "does not exist"),
    ],
)
def test_a_query_path_that_is_not_a_file_says_what_it_is(tmp_path, make, kind) -> None:
    from fedarches.shared.datafiles import read_query
    from fedarches.shared.errors import UserInputError

    path = tmp_path / "query.h5ad"
    make(path)
    with pytest.raises(UserInputError, match=re.escape(kind)) as info:
        read_query(path)  # a FIFO would block forever if it were opened
    assert info.value.exit_code == 10
