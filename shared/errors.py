"""One error hierarchy for fedarches, each class with an exit code and a hint.

The CLI turns a :class:`FedarchesError` into ``error: ...`` / ``hint: ...`` on stderr and exits
with the class's ``exit_code``; anything else is a bug and gets a traceback only with ``--debug``.
Codes come in ranges: 10-19 input, 20-29 bundle, 30-39 privacy and crypto, 40-49 network.
"""

from __future__ import annotations

from typing import ClassVar


class FedarchesError(Exception):
    """Base class of every error fedarches raises for a user's mistake or a refused input."""

    exit_code: ClassVar[int] = 1
    hint: ClassVar[str] = "run the command again with --debug for the full traceback"

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if "exit_code" not in cls.__dict__ or "hint" not in cls.__dict__:
            msg = f"{cls.__name__} must set class-level exit_code and hint"
            raise TypeError(msg)

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        if hint is not None:
            self.hint = hint  # type: ignore[misc]


class UserInputError(FedarchesError):
    """The user's file or arguments cannot be used as given."""

    exit_code = 10
    hint = "check the input file and the command's options (--help)"


class QueryDataError(UserInputError):
    """The query AnnData fails validation (counts, genes, batches, cells)."""

    exit_code = 11
    hint = "fix the query .h5ad as the message says, then run the command again"


class GeneOverlapError(QueryDataError):
    """Too few of the reference's genes are present in the query."""

    exit_code = 12
    hint = (
        "make sure var_names (or a var column) hold Ensembl IDs or gene symbols of the same "
        "species as the reference, or use a reference built on your gene panel"
    )


class BundleError(FedarchesError):
    """A reference bundle is missing, malformed or of an unsupported format."""

    exit_code = 20
    hint = "ask the atlas maintainers for a fresh copy of the bundle"


class BundleIntegrityError(BundleError):
    """A bundle's signature or a file hash does not verify: it was altered or is unsigned."""

    exit_code = 21
    hint = (
        "do not use this bundle: fetch it again from the coordinator and check that --trust "
        "names the coordinator's bundle-signing public key"
    )


class AdapterError(FedarchesError):
    """Adapter weights do not match the bundle they claim to extend."""

    exit_code = 22
    hint = "the adapter was made against another bundle; map the query again with this bundle"


class CryptoError(FedarchesError):
    """A key file is missing, unreadable or of the wrong type."""

    exit_code = 30
    hint = "check the key file's path and permissions; a key pair that was never made must be created first"


class PrivacyError(FedarchesError):
    """A release would break the lab's privacy policy."""

    exit_code = 31
    hint = "nothing was sent; review the lab's privacy policy"


class BudgetExceededError(PrivacyError):
    """A release would take the lab's total ε or δ over its policy's budget."""

    exit_code = 32
    hint = "nothing was sent; raise dp.budget_epsilon in LAB_DIR/policy.toml only with your ethics board's approval"


class FederationError(FedarchesError):
    """The federation could not do what was asked: SuperLink unreachable, a run failed."""

    exit_code = 40
    hint = "check that the coordinator's SuperLink is running and reachable; its log is under COORD_DIR/logs/"


class ConfigError(UserInputError):
    """A coordinator or lab directory is missing, incomplete or inconsistent."""

    exit_code = 13
    hint = "create the coordinator directory again, or ask the atlas maintainers for the lab's export again"


class OutputPathError(UserInputError):
    """An output path would replace an input, clashes with another output, or cannot be written."""

    exit_code = 14
    hint = "choose an output path in a writable directory, different from every input"


class OutputWriteError(UserInputError):
    """Writing the outputs failed (disk full, permissions changed); nothing was left behind."""

    exit_code = 15
    hint = "free space or fix permissions where the outputs go, then run the command again"


class AdapterSizeError(QueryDataError):
    """The query's adapter would be larger than the coordinator accepts (too many batches)."""

    exit_code = 16
    hint = "map fewer batches at once: merge samples into fewer --batch-key values, or drop --batch-key"


class LedgerError(PrivacyError):
    """The lab's release ledger is missing, empty, truncated, not SQLite, or its schema was altered."""

    exit_code = 33
    hint = (
        "the file was left as it is and nothing is released until it is fixed: keep a copy for review and "
        "restore LAB_DIR/ledger.sqlite from a backup; never delete it to start afresh"
    )


class LedgerTamperedError(LedgerError):
    """The ledger's hash chain is broken, or it disagrees with an anchor kept outside the lab."""

    exit_code = 34
    hint = (
        "the ledger was edited outside fedarches: keep a copy for review and compare it with the "
        "coordinator's round reports"
    )


class LedgerAnchorError(UserInputError):
    """A coordinator report or ledger receipt cannot be read as an anchor for this lab's ledger."""

    exit_code = 35
    hint = (
        "pass the report.json the coordinator wrote for a round this lab took part in "
        "(COORD_DIR/rounds/ROUND/report.json), or a receipt this lab's ledger wrote earlier"
    )


class BundleSchemaError(BundleError):
    """A signed bundle's manifest.json or setup.json does not follow the bundle format."""

    exit_code = 23
    hint = (
        "the bundle was written by an incompatible or faulty fedarches: ask the atlas maintainers to "
        "rebuild the reference bundle with the same fedarches version as the labs"
    )


class BundlePathError(BundleIntegrityError):
    """A bundle names a file outside its directory, or holds a link or something that is not a regular file."""

    exit_code = 24
    hint = (
        "do not use this bundle: a bundle is a directory of regular files named by its manifest; "
        "fetch it again from the coordinator"
    )


class BundleSizeError(BundleIntegrityError):
    """A bundle file's size differs from its signed manifest, or a file or the bundle exceeds the size limit."""

    exit_code = 25
    hint = "do not use this bundle: fetch it again from the coordinator, and check the disk it is stored on"


class UnsafeModelError(BundleIntegrityError):
    """A model file holds pickled objects that a weights file never needs (they could run code), or is no model."""

    exit_code = 26
    hint = (
        "do not use this model file: it was not written by scvi-tools' model.save() or was altered, and "
        "fedarches never unpickles anything but tensors, arrays and plain values; fetch it again from its source"
    )


class ProtocolError(FederationError):
    """A peer sent a message this version of fedarches cannot use: missing or malformed fields."""

    exit_code = 46
    hint = "the coordinator and this lab may run different fedarches versions: compare `pip show fedarches` on both"


def _defined_here(cls: type[FedarchesError]) -> list[type[FedarchesError]]:
    subclasses = [sub for sub in cls.__subclasses__() if sub.__module__ == __name__]
    return [cls, *(c for sub in subclasses for c in _defined_here(sub))]


# every class above, by exit code (classes defined elsewhere, like the mapping's ReferenceChangedError, are not here)
EXIT_CODE_HELP: dict[int, str] = {cls.exit_code: cls.hint for cls in _defined_here(FedarchesError)}
