"""Which domains can be evaluated: a domain with no validation split (a one-document domain, or prepared with
`val_docs: 0`) is trained on but has nothing to measure a validation loss on; nor has one whose validation
documents are all shorter than two tokens when each document is scored on its own (`windows: documents`). Such a
domain is left out (never scored as NaN into an average), or refused when the user named it."""

from __future__ import annotations

import numpy as np

from warmstart.data.shards import DomainData
from warmstart.errors import UserError

NO_VAL = "has no validation documents (prepared with val_docs: 0, or too few documents)"
NO_SCORABLE = "has no validation document of 2 or more tokens to score with windows: documents (all are empty)"


def has_validation(domain: DomainData) -> bool:
    """True when the domain's validation split holds a next-token pair (two tokens) to evaluate on."""
    return domain.n_tokens("val") >= 2


def why_not_evaluable(domain: DomainData, windows: str = "packed") -> str | None:
    """Why `domain` has no validation token to score in `windows` (packed | documents), or None when it has."""
    if not has_validation(domain):
        return NO_VAL
    if windows == "documents" and int(np.diff(domain.doc_offsets("val")).max(initial=0)) < 2:
        return NO_SCORABLE
    return None


def evaluable_domains(
    domains: dict[str, DomainData], names: list[str], explicit: bool, what: str, windows: str = "packed"
) -> list[str]:
    """`names` without the domains that have no validation token to score (see `why_not_evaluable`).

    A domain the user named (`explicit`) without one, or no domain left at all, is a UserError naming `what`;
    otherwise the skipped ones are left out (the caller says so once, with `skipped_note`).
    """
    why = {n: w for n in names if (w := why_not_evaluable(domains[n], windows))}
    if why and explicit:
        first = next(iter(why))
        fix = "prepare it with val_docs >= 1" if why[first] == NO_VAL else "use windows: packed"
        raise UserError(f"{what}: domain {first!r} {why[first]}; leave it out, or {fix}")
    kept = [n for n in names if n not in why]
    if names and not kept:
        if set(why.values()) == {NO_VAL}:
            raise UserError(
                f"{what}: no domain has validation documents ({', '.join(why)}); prepare with val_docs >= 1"
            )
        raise UserError(
            f"{what}: no domain has a validation token to score ({', '.join(why)}); use windows: packed, or "
            "prepare with val_docs >= 1"
        )
    return kept


def skipped_note(domains: dict[str, DomainData], skipped: list[str], windows: str, then: str) -> str:
    """One line naming the domains left out and why (`then`: what happens to them)."""
    docs = [n for n in skipped if why_not_evaluable(domains[n], windows) == NO_SCORABLE]
    parts = []
    if len(docs) < len(skipped):
        parts.append(f"no validation documents in {', '.join(n for n in skipped if n not in docs)}")
    if docs:
        parts.append(f"no validation document of 2 or more tokens in {', '.join(docs)} (windows: documents)")
    return f"{'; '.join(parts)}; {then}"
