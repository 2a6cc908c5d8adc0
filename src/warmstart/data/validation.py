"""Which domains can be evaluated: a domain with no validation split (a one-document domain, or prepared with
`val_docs: 0`) is trained on but has nothing to measure a validation loss on."""

from __future__ import annotations

from warmstart.data.shards import DomainData
from warmstart.errors import UserError


def has_validation(domain: DomainData) -> bool:
    """True when the domain's validation split holds a next-token pair (two tokens) to evaluate on."""
    return domain.n_tokens("val") >= 2


def evaluable_domains(domains: dict[str, DomainData], names: list[str], explicit: bool, what: str) -> list[str]:
    """`names` without the domains that have no validation split (a one-document domain, or val_docs: 0).

    A domain the user named (`explicit`) without validation data, or no domain left at all, is a UserError
    naming `what`; otherwise the skipped ones are left out (the caller says so once).
    """
    empty = [n for n in names if not has_validation(domains[n])]
    if empty and explicit:
        raise UserError(
            f"{what}: domain {empty[0]!r} has no validation documents (prepared with val_docs: 0, or too few "
            "documents); leave it out, or prepare it with val_docs >= 1"
        )
    kept = [n for n in names if n not in empty]
    if names and not kept:
        raise UserError(
            f"{what}: no domain has validation documents ({', '.join(empty)}); prepare with val_docs >= 1"
        )
    return kept
