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
    hint = "create keys with `fedarches-server keygen --out DIR`"


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
    hint = "check that `fedarches-server serve` is running and see its log under COORD_DIR/logs/"


class ConfigError(UserInputError):
    """A coordinator or lab directory is missing, incomplete or inconsistent."""

    exit_code = 13
    hint = "create it with `fedarches-server init` (coordinator) or `fedarches-server add-lab` (lab)"


EXIT_CODE_HELP: dict[int, str] = {
    cls.exit_code: cls.hint
    for cls in (
        FedarchesError,
        UserInputError,
        QueryDataError,
        GeneOverlapError,
        BundleError,
        BundleIntegrityError,
        AdapterError,
        CryptoError,
        PrivacyError,
        BudgetExceededError,
        FederationError,
        ConfigError,
    )
}
