"""Reference files in, a signed bundle out: what ``build-reference`` and ``import-reference`` run.

Every path is checked before minutes of training, the signing key is loaded before anything is
read, and the bundle is written atomically (:func:`~fedarches.shared.bundle.write_bundle`).
"""

from __future__ import annotations

import logging
from pathlib import Path

from fedarches.server.reference import ReferenceOptions, build_reference, import_reference
from fedarches.shared._constants import BUNDLE_KEYS
from fedarches.shared.bundle import ReferenceBundle, write_bundle
from fedarches.shared.crypto import load_private_key
from fedarches.shared.datafiles import read_query
from fedarches.shared.errors import OutputPathError
from fedarches.shared.paths import check_outputs

__all__ = ["build_bundle", "check_bundle_out", "import_bundle"]
log = logging.getLogger("fedarches.server")


def build_bundle(
    reference: Path | str,
    signing_key: Path | str,
    out: Path | str,
    *,
    batch_key: str | None = None,
    labels_key: str | None = None,
    layer: str | None = None,
    gene_symbols_key: str | None = None,
    options: ReferenceOptions | None = None,
    overwrite: bool = False,
) -> ReferenceBundle:
    """Train a reference model on the file ``reference`` and write it, signed, to ``out``; return it opened."""
    out = Path(out)
    check_bundle_out(out, [Path(reference), Path(signing_key)], overwrite=overwrite)  # before minutes of training
    key = load_private_key(Path(signing_key))
    adata = read_query(Path(reference), what="reference file")
    contents = build_reference(
        adata,
        batch_key=batch_key,
        labels_key=labels_key,
        layer=layer,
        gene_symbols_key=gene_symbols_key,
        options=options or ReferenceOptions(),
    )
    write_bundle(out, contents, key, overwrite=overwrite)
    return ReferenceBundle.open(out, key.public_key())


def import_bundle(
    model_dir: Path | str,
    signing_key: Path | str,
    out: Path | str,
    *,
    reference_data: Path | str | None = None,
    labels_key: str | None = None,
    gene_symbols_key: str | None = None,
    overwrite: bool = False,
) -> ReferenceBundle:
    """Wrap a model saved by scvi-tools' ``model.save()`` into a signed bundle at ``out``; return it opened."""
    out = Path(out)
    data = None if reference_data is None else Path(reference_data)
    check_bundle_out(out, [Path(model_dir), Path(signing_key), data], overwrite=overwrite)
    key = load_private_key(Path(signing_key))
    adata = read_query(data, what="reference data") if data is not None else None
    contents = import_reference(
        Path(model_dir), reference_adata=adata, labels_key=labels_key, gene_symbols_key=gene_symbols_key
    )
    if contents.embedding is None:
        log.warning("no reference data given: the bundle has no reference embedding, so labs get no X_ref_umap")
    write_bundle(out, contents, key, overwrite=overwrite)
    return ReferenceBundle.open(out, key.public_key())


def check_bundle_out(out: Path, inputs: list[Path | None], *, overwrite: bool) -> None:
    """Refuse a bundle ``--out`` that exists (unless ``--overwrite`` and it is a bundle), or would replace an input."""
    check_outputs(inputs, directories={"--out": out})
    if out.exists() and not overwrite:
        msg = f"--out {out} already exists"
        raise OutputPathError(msg, hint="choose another --out directory, or pass --overwrite to replace a bundle")
    if out.is_dir() and any(out.iterdir()) and not (out / BUNDLE_KEYS.MANIFEST).is_file():
        msg = f"--out {out} is a directory with files in it, but not a bundle: --overwrite would delete them"
        raise OutputPathError(msg, hint="choose a new --out directory; --overwrite only replaces an earlier bundle")
