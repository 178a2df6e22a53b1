"""Deterministic seed data of the BC emulator: a CRONUS-like company (LCY = USD).

50 customers named ``seed_data.BC_CUSTOMER_NAMES`` (cities, phones, e-mails, some blank fields, two blocked,
a few in EUR/GBP/CAD), 10 vendors, each with the company contact BC creates with it (same name and address, linked
by a business relation), 30 person contacts (24 under the companies of the first 12 customers, 3 under those of the
first 2 vendors, 3 without a company), 15 items, currencies, 5 salespeople, units of measure, payment terms,
shipment and payment methods.

Everything goes through the emulator's own insert path (same validation as the API); timestamps are spread over
the 30 days before the emulator's clock so that anything created afterwards is newer.
"""
from __future__ import annotations

import random
import re
from datetime import timedelta
from typing import TYPE_CHECKING

from .bc_schema import ZERO_GUID
from .seed_data import BC_CUSTOMER_NAMES, CITIES, person_names

if TYPE_CHECKING:  # pragma: no cover
    from .bc import BCEmulator

STATES = {"Seattle": ("WA", "98101"), "Atlanta": ("GA", "30301"), "Chicago": ("IL", "60601"),
          "Miami": ("FL", "33101"), "Denver": ("CO", "80201"), "Boston": ("MA", "02108"),
          "Dallas": ("TX", "75201"), "Portland": ("OR", "97201"), "Phoenix": ("AZ", "85001"),
          "Austin": ("TX", "73301")}
FOREIGN = {5: ("GB", "London", "", "EC1A 1BB", "GBP"), 17: ("DE", "Berlin", "", "10115", "EUR"),
           29: ("CA", "Toronto", "ON", "M5H 2N2", "CAD"), 41: ("GB", "Manchester", "", "M1 1AE", "GBP")}
STREETS = ["Market Square", "Main Street", "Oak Avenue", "Lake Drive", "Pine Road", "Harbor Way", "Elm Street",
           "Sunset Boulevard", "River Road", "Park Lane"]

CURRENCIES = [("EUR", "Euro", "€"), ("GBP", "British pound", "£"), ("CAD", "Canadian dollar", "$")]
SALESPEOPLE = [("JO", "Jim Olive", "Sales Manager", 5), ("PS", "Peter Saddow", "Sales Representative", 7.5),
               ("BD", "Bart Duncan", "Sales Representative", 7.5), ("HR", "Helen Ray", "Key Account Manager", 6),
               ("OF", "Otis Falls", "Purchaser", 0)]
UNITS = [("PCS", "Piece", "H87"), ("BOX", "Box", "BX"), ("HOUR", "Hour", "HUR"), ("DAY", "Day", "DAY"),
         ("KG", "Kilogram", "KGM"), ("SET", "Set", "SET"), ("PACK", "Pack", "PK")]
PAYMENT_TERMS = [("10 DAYS", "Net 10 days", "10D", "", 0), ("14 DAYS", "Net 14 days", "14D", "", 0),
                 ("30 DAYS", "Net 30 days", "30D", "", 0), ("1M(8D)", "1 Month/2% 8 days", "1M", "8D", 2),
                 ("CM", "Current Month", "CM", "", 0), ("COD", "Cash on delivery", "0D", "", 0)]
SHIPMENT_METHODS = [("CFR", "Cost and Freight"), ("CIF", "Cost Insurance and Freight"),
                    ("DDP", "Delivered Duty Paid"), ("EXW", "Ex Warehouse"), ("FOB", "Free on Board"),
                    ("PICKUP", "Pickup at Location")]
PAYMENT_METHODS = [("ACCOUNT", "Payment on account"), ("BANK", "Bank Transfer"), ("CASH", "Cash"),
                   ("CHECK", "Check"), ("CARD", "Credit card")]
VENDOR_NAMES = ["Fabrikam, Inc.", "First Up Consultants", "Graphic Design Institute", "Wide World Importers",
                "Nod Publishers", "Lewis Home Furniture", "Service Electronics Ltd.", "Custom Metals Incorporated",
                "Adatum Paper Supply", "Northern Office Supplies"]
ITEMS = [("1896-S", "ATHENS Desk", "Inventory", "PCS", 1000.8, 780.7),
         ("1900-S", "PARIS Guest Chair, black", "Inventory", "PCS", 192.8, 150.4),
         ("1906-S", "ATHENS Mobile Pedestal", "Inventory", "PCS", 281.4, 219.5),
         ("1908-S", "LONDON Swivel Chair, blue", "Inventory", "PCS", 190.1, 148.3),
         ("1920-S", "ANTWERP Conference Table", "Inventory", "PCS", 649.4, 506.6),
         ("1928-S", "AMSTERDAM Lamp", "Inventory", "PCS", 54.9, 42.8),
         ("1936-S", "BERLIN Guest Chair, yellow", "Inventory", "PCS", 192.8, 150.4),
         ("1960-S", "ROME Guest Chair, green", "Inventory", "PCS", 192.8, 150.4),
         ("1964-S", "TOKYO Guest Chair, blue", "Inventory", "PCS", 192.8, 150.4),
         ("1968-S", "MEXICO Swivel Chair, black", "Inventory", "PCS", 190.1, 148.3),
         ("1972-S", "MUNICH Swivel Chair, yellow", "Inventory", "PCS", 190.1, 148.3),
         ("1996-S", "ATLANTA Whiteboard, base", "Inventory", "PCS", 1397.3, 1090.0),
         ("2000-S", "SYDNEY Swivel Chair, green", "Inventory", "PCS", 190.1, 148.3),
         ("CONSULTING", "Consulting hour", "Service", "HOUR", 120, 0),
         ("PAPER-BOX", "Printer paper, box", "Non-Inventory", "BOX", 25.5, 18.2)]
JOB_TITLES = ["Purchasing Manager", "CEO", "Office Manager", "Accountant", "Sales Director", "IT Manager",
              "Buyer", "Assistant"]


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "", name.lower())


def seed_company(emu: "BCEmulator") -> None:
    rnd = random.Random(20261126)
    start = emu._utc(emu.now()) - timedelta(days=30)
    tick = [0]

    def put(entity_set: str, fields: dict, system: dict | None = None) -> dict:
        tick[0] += 1
        return emu._insert(emu._tables[entity_set], fields, system=system,
                           at=start + timedelta(seconds=37 * tick[0]))

    with emu.lock:
        for code, name, symbol in CURRENCIES:
            put("currencies", {"code": code, "displayName": name, "symbol": symbol})
        for code, name, title, commission in SALESPEOPLE:
            first, last = name.lower().split()
            put("salespeoplePurchasers", {
                "code": code, "displayName": name, "email": f"{first}.{last}@cronus-demosite.com",
                "phoneNo": f"+1 425-555-01{rnd.randint(10, 99)}", "jobTitle": title, "commisionPercent": commission})
        for code, name, iso in UNITS:
            put("unitsOfMeasure", {"code": code, "displayName": name, "internationalStandardCode": iso})
        terms = [put("paymentTerms", {"code": c, "displayName": n, "dueDateCalculation": due,
                                      "discountDateCalculation": disc, "discountPercent": pct})
                 for c, n, due, disc, pct in PAYMENT_TERMS]
        shipments = [put("shipmentMethods", {"code": c, "displayName": n}) for c, n in SHIPMENT_METHODS]
        methods = [put("paymentMethods", {"code": c, "displayName": n}) for c, n in PAYMENT_METHODS]
        codes = [s[0] for s in SALESPEOPLE[:4]]

        customers = []
        for i, name in enumerate(BC_CUSTOMER_NAMES):
            slug = _slug(name)
            if i in FOREIGN:
                country, city, state, postal, currency = FOREIGN[i]
            else:
                city = CITIES[i % len(CITIES)]
                state, postal = STATES[city]
                country, currency = "US", ""
            fields = {
                "displayName": name, "type": "Company",
                "addressLine1": f"{rnd.randint(1, 999)} {STREETS[i % len(STREETS)]}",
                "addressLine2": "Suite 200" if i % 9 == 2 else "",
                "city": city, "state": state, "country": country, "postalCode": postal,
                "phoneNumber": "" if i % 7 == 3 else f"+1 425 555 0{100 + i}",
                "email": "" if i % 5 == 4 else f"info@{slug}.com",
                "website": f"www.{slug}.com" if i % 3 == 0 else "",
                "salespersonCode": "" if i % 4 == 0 else codes[i % len(codes)],
                "creditLimit": rnd.choice([0, 5000, 10000, 25000]),
                "taxLiable": country == "US",
                "currencyCode": currency,
                "paymentTermsId": terms[i % len(terms)]["id"] if i % 6 else ZERO_GUID,
                "shipmentMethodId": shipments[i % len(shipments)]["id"] if i % 2 else ZERO_GUID,
                "paymentMethodId": methods[i % len(methods)]["id"],
                "blocked": {12: "All", 27: "Invoice"}.get(i, "_x0020_"),
            }
            balance = round(rnd.uniform(0, 20000), 2) if i % 3 else 0
            customers.append(put("customers", fields, {"balanceDue": balance}))

        vendors = []
        for i, name in enumerate(VENDOR_NAMES):
            city = CITIES[(i * 3) % len(CITIES)]
            state, postal = STATES[city]
            vendors.append(put("vendors", {
                "displayName": name, "addressLine1": f"{rnd.randint(1, 999)} {STREETS[(i + 3) % len(STREETS)]}",
                "city": city, "state": state, "country": "US", "postalCode": postal,
                "phoneNumber": f"+1 206 555 0{150 + i}", "email": "" if i % 4 == 3 else f"sales@{_slug(name)}.com",
                "website": f"www.{_slug(name)}.com" if i % 2 else "", "currencyCode": "EUR" if i == 6 else "",
                "paymentTermsId": terms[(i + 2) % len(terms)]["id"], "paymentMethodId": methods[1]["id"],
                "taxLiable": i % 2 == 0, "blocked": "All" if i == 9 else "_x0020_",
            }, {"balance": round(rnd.uniform(0, 9000), 2) if i % 2 else 0}))

        # the company contacts BC created with the customers and vendors (emulators/bc.py _create_company_contact)
        companies = [emu.company_contact("customers", c["id"]) for c in customers[:12]]
        companies += [emu.company_contact("vendors", v["id"]) for v in vendors[:2]]
        for i, (first, last) in enumerate(person_names(30, 5050)):
            if i < 24:
                company = companies[i // 2]
            elif i < 27:
                company = companies[12 + (i - 24) % 2]
            else:
                company = None
            domain = f"{_slug(company['displayName'])}.com" if company else "example.com"
            put("contacts", {
                "type": "Person", "displayName": f"{first} {last}",
                "jobTitle": JOB_TITLES[i % len(JOB_TITLES)] if i % 5 != 4 else "",
                "companyNumber": company["number"] if company else "",
                "addressLine1": company["addressLine1"] if company else f"{rnd.randint(1, 999)} Elm Street",
                "city": company["city"] if company else "Seattle",
                "state": company["state"] if company else "WA",
                "country": company["country"] if company else "US",
                "postalCode": company["postalCode"] if company else "98101",
                "phoneNumber": "" if i % 6 == 5 else f"+1 425 555 0{300 + i}",
                "mobilePhoneNumber": f"+1 206 555 0{400 + i}" if i % 2 else "",
                "email": "" if i % 7 == 6 else f"{first.lower()}.{last.lower()}{i}@{domain}",
                "privacyBlocked": i == 29,
            }, {"lastInteractionDate": (start + timedelta(days=i % 20)).date().isoformat()} if i % 3 == 0 else None)

        for number, name, type_, unit, price, cost in ITEMS:
            put("items", {
                "number": number, "displayName": name, "type": type_, "unitPrice": price, "unitCost": cost,
                "baseUnitOfMeasureCode": unit, "priceIncludesTax": False, "blocked": number == "1906-S",
                "gtin": f"0{7000000000000 + rnd.randint(0, 999999):013d}" if type_ == "Inventory" else "",
            }, {"inventory": rnd.randint(0, 120)} if type_ == "Inventory" else None)
