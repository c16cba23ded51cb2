"""Gene programs (gene sets) as an expiMap mask: read a GMT file, annotate an AnnData with it.

The layout is scArches' (``scarches.utils.add_annotations``): ``adata.varm['I']`` is a genes x
programs 0/1 matrix and ``adata.uns['terms']`` the programs' names, in the same order. A GMT file
has one program a line: its name, a description, then its genes, separated by tabs (names may hold
spaces, unlike scArches' reader, which splits on any whitespace). Genes are matched case-insensitively.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fedarches.shared.errors import UserInputError

if TYPE_CHECKING:
    from anndata import AnnData

MASK_KEY = "I"
TERMS_KEY = "terms"
GMT_HINT = "give a GMT file: one gene set a line, its name, a description and its genes, separated by tabs"
MIN_GENES = 12  # the expiMap tutorial's: a program needs more than this many of the data's genes


@dataclass(frozen=True)
class GenePrograms:
    """Programs read from a GMT file: name -> gene symbols (upper case), in file order."""

    programs: dict[str, tuple[str, ...]]
    source: str

    def mask(self, genes: np.ndarray | list[str], *, min_genes: int = MIN_GENES) -> tuple[np.ndarray, list[str]]:
        """The genes x programs 0/1 mask over ``genes``, keeping programs with more than ``min_genes`` of them.

        Raises :class:`UserInputError` when no program keeps that many (genes named otherwise than the file's).
        """
        index = {str(g).upper(): i for i, g in enumerate(genes)}
        columns, names = [], []
        for name, members in self.programs.items():
            rows = sorted({index[g] for g in members if g in index})
            if len(rows) > min_genes:
                column = np.zeros(len(index), dtype=np.int8)
                column[rows] = 1
                columns.append(column)
                names.append(name)
        if not names:
            shown = ", ".join(str(g) for g in list(genes)[:3])
            msg = (
                f"no gene program of {self.source} has more than {min_genes} of the data's {len(genes)} genes "
                f"(first genes: {shown})"
            )
            raise UserInputError(
                msg, hint="use the gene symbols the GMT file names (gene_symbols_key; --gene-symbols-key)"
            )
        return np.stack(columns, axis=1), names


def read_gmt(path: str | Path) -> GenePrograms:
    """Read a GMT file (tab-separated: name, description, genes); raise UserInputError if it is not one."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        msg = f"cannot read gene programs from {path}: {err}"
        raise UserInputError(msg, hint=GMT_HINT) from None
    programs: dict[str, tuple[str, ...]] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 3 or not fields[0].strip():
            msg = f"{path} line {number} is not a GMT line (name, description, genes, separated by tabs)"
            raise UserInputError(msg, hint=GMT_HINT)
        name = fields[0].strip()
        if name in programs:
            msg = f"{path} names gene program {name!r} twice (line {number})"
            raise UserInputError(msg, hint="give each gene set a unique name")
        programs[name] = tuple(dict.fromkeys(g.strip().upper() for g in fields[2:] if g.strip()))
    if not programs:
        msg = f"{path} holds no gene programs"
        raise UserInputError(msg, hint=GMT_HINT)
    return GenePrograms(programs, source=path.name)


def add_gene_programs(
    adata: AnnData,
    gmt: str | Path | GenePrograms,
    *,
    min_genes: int = MIN_GENES,
    gene_symbols_key: str | None = None,
    genes: np.ndarray | None = None,
    varm_key: str = MASK_KEY,
    uns_key: str = TERMS_KEY,
) -> int:
    """Annotate ``adata`` with gene programs, as ``scarches.utils.add_annotations`` does; in place.

    Parameters
    ----------
    adata
        The data; its genes are ``var_names``, or the ``var`` column ``gene_symbols_key``.
    gmt
        A GMT file, or programs already read with :func:`read_gmt`.
    min_genes
        Keep programs with more than this many of ``adata``'s genes.
    gene_symbols_key
        ``var`` column of gene symbols, when ``var_names`` are other IDs (Ensembl).
    genes
        The genes' symbols, one per ``var`` row, instead of a ``var`` column.
    varm_key, uns_key
        Where the mask (genes x programs) and the programs' names go.

    Returns
    -------
    The number of programs kept.
    """
    programs = gmt if isinstance(gmt, GenePrograms) else read_gmt(gmt)
    if gene_symbols_key is not None and gene_symbols_key not in adata.var:
        msg = f"var has no column {gene_symbols_key!r}; columns are {list(adata.var.columns)}"
        raise UserInputError(msg)
    if genes is None:
        genes = adata.var[gene_symbols_key].astype(str).to_numpy() if gene_symbols_key else adata.var_names.to_numpy()
    mask, names = programs.mask(genes, min_genes=min_genes)
    adata.varm[varm_key] = mask
    adata.uns[uns_key] = names
    return len(names)
