"""Deterministic seed data shared by both emulators, so that some records match naturally across the two systems.

BC customers take ``COMPANY_NAMES[:50]``, Dataverse accounts ``COMPANY_NAMES[30:70]``: the 20 names in common
(``COMPANY_NAMES[30:50]``) are the natural match-by-name candidates. A few of those differ only by case in
Dataverse (``CASE_VARIANTS``) to exercise case-(in)sensitive matching, and one name appears twice among the
accounts (``DUPLICATE_ACCOUNT_NAME``) to exercise "several matches".
"""
from __future__ import annotations

import random

_FIRST = ["Adatum", "Alpine", "Blue Yonder", "Coho", "Contoso", "Fabrikam", "Fourth Coffee", "Litware",
          "Lucerne", "Margie's", "Northwind", "Proseware", "Relecloud", "Southridge", "Tailspin", "Trey",
          "VanArsdel", "Wide World", "Wingtip", "Woodgrove", "Graphic", "Humongous", "City Power", "Munson's"]
_SECOND = ["Corporation", "Ski House", "Airlines", "Winery", "Traders", "Toys", "Bank", "Publishing",
           "Importers", "Travel", "Insurance", "Furnishings", "Design Institute", "Pickle Company",
           "Research", "Software", "Video", "Light", "Electronics", "Outfitters"]


def _names(n: int) -> list[str]:
    rnd = random.Random(20261126)
    seen: set[str] = set()
    out: list[str] = []
    while len(out) < n:
        name = f"{rnd.choice(_FIRST)} {rnd.choice(_SECOND)}"
        if name not in seen:
            seen.add(name)
            out.append(name)
    return out


COMPANY_NAMES: list[str] = _names(70)
BC_CUSTOMER_NAMES: list[str] = COMPANY_NAMES[:50]
DV_ACCOUNT_NAMES: list[str] = COMPANY_NAMES[30:70]
CASE_VARIANTS: dict[str, str] = {COMPANY_NAMES[i]: COMPANY_NAMES[i].upper() for i in (31, 33)}
"""BC name -> the Dataverse account's name (differs only by case)."""
DUPLICATE_ACCOUNT_NAME: str = COMPANY_NAMES[35]
"""Seeded twice among Dataverse accounts."""

CITIES = ["Seattle", "Atlanta", "Chicago", "Miami", "Denver", "Boston", "Dallas", "Portland", "Phoenix", "Austin"]
PERSON_FIRST = ["Anna", "Ben", "Chris", "Dana", "Eli", "Fay", "Gus", "Hana", "Ivan", "Jo", "Kim", "Lou"]
PERSON_LAST = ["Smith", "Jones", "Garcia", "Chen", "Novak", "Okafor", "Rossi", "Silva", "Tanaka", "Weber"]


def person_names(n: int, seed: int) -> list[tuple[str, str]]:
    rnd = random.Random(seed)
    return [(rnd.choice(PERSON_FIRST), rnd.choice(PERSON_LAST)) for _ in range(n)]
