"""OData literals and the filter builder: exact strings, and inputs that try to change a filter's meaning."""
from __future__ import annotations

import enum
import uuid
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from urllib.parse import unquote

import pytest

from sync import odata
from sync.odata import Guid, and_, any_of, contains, endswith, eq, ge, gt, le, literal, lt, ne, not_, or_, \
    query_string, startswith

G = "b37406e8-eaf1-ef11-9b20-d99fd2b71a0f"


class TestLiteral:
    def test_strings_are_quoted_with_quotes_doubled(self):
        assert literal("O'Brien") == "'O''Brien'"
        assert literal("") == "''"
        assert literal("''") == "''''''"
        assert literal("Spotsmeyer's Furnishings") == "'Spotsmeyer''s Furnishings'"

    def test_guid_text_stays_a_string_unless_wrapped(self):
        assert literal(G) == f"'{G}'"
        assert literal(Guid(G)) == G
        assert literal(uuid.UUID(G)) == G

    def test_guid_is_normalized_and_validated(self):
        assert Guid("{B37406E8-EAF1-EF11-9B20-D99FD2B71A0F}") == G
        assert Guid(G.replace("-", "")) == G
        assert Guid(uuid.UUID(G)) == G
        for bad in ("", "x", G + " or 1 eq 1", G[:-1], f"{G})", "00000000-0000-0000-0000-00000000000g"):
            with pytest.raises(ValueError):
                Guid(bad)
        with pytest.raises(TypeError):
            Guid(123)  # type: ignore[arg-type]

    def test_numbers_bools_null(self):
        assert literal(None) == "null"
        assert literal(True) == "true"
        assert literal(False) == "false"
        assert literal(0) == "0"
        assert literal(-42) == "-42"
        assert literal(1000.5) == "1000.5"
        assert literal(1e20) == "100000000000000000000"
        assert literal(1e-7) == "0.0000001"
        assert literal(Decimal("12.3400")) == "12.3400"
        assert literal(Decimal("1E+3")) == "1000"
        assert literal(-0.0) == "0"

    @pytest.mark.parametrize("bad", [float("nan"), float("inf"), Decimal("NaN"), Decimal("-Infinity")])
    def test_non_finite_numbers_are_refused(self, bad):
        with pytest.raises(ValueError):
            literal(bad)

    def test_datetimes_are_unquoted_utc(self):
        assert literal(datetime(2019, 8, 18, 20, 5, 51, 603000, tzinfo=timezone.utc)) == "2019-08-18T20:05:51.603Z"
        assert literal(datetime(2024, 1, 1, tzinfo=timezone.utc)) == "2024-01-01T00:00:00Z"
        plus_two = timezone(timedelta(hours=2))
        assert literal(datetime(2024, 1, 1, 2, 0, 0, 999999, tzinfo=plus_two)) == "2024-01-01T00:00:00.999Z"

    def test_naive_datetime_is_refused(self):
        with pytest.raises(ValueError, match="naive"):
            literal(datetime(2024, 1, 1))

    def test_date(self):
        assert literal(date(2024, 1, 31)) == "2024-01-31"

    def test_enums(self):
        class Choice(enum.IntEnum):
            CUSTOMER = 3

        class ContactType(enum.Enum):
            COMPANY = "Company"

        assert literal(Choice.CUSTOMER) == "3"
        assert literal(ContactType.COMPANY) == "'Company'"

    @pytest.mark.parametrize("bad", [object(), b"bytes", [1], {"a": 1}])
    def test_unknown_types_are_refused(self, bad):
        with pytest.raises(TypeError):
            literal(bad)


class TestBuilder:
    def test_comparisons(self):
        assert eq("number", "10000") == "number eq '10000'"
        assert ne("statecode", 0) == "statecode ne 0"
        assert gt("lastModifiedDateTime", datetime(2019, 8, 18, 20, 5, 51, 603000, tzinfo=timezone.utc)) == \
            "lastModifiedDateTime gt 2019-08-18T20:05:51.603Z"
        assert ge("creditlimit", 1000) == "creditlimit ge 1000"
        assert lt("a", 1.5) == "a lt 1.5"
        assert le("a", None) == "a le null"
        assert eq("_parentcustomerid_value", Guid(G)) == f"_parentcustomerid_value eq {G}"
        assert eq("address/city", "Paris") == "address/city eq 'Paris'"

    def test_and_or_parenthesize_compound_operands(self):
        a, b, c = eq("a", 1), eq("b", 2), eq("c", 3)
        assert and_(a, b) == "a eq 1 and b eq 2"
        assert or_(a, b) == "a eq 1 or b eq 2"
        assert and_(or_(a, b), c) == "(a eq 1 or b eq 2) and c eq 3"
        assert or_(and_(a, b), c) == "(a eq 1 and b eq 2) or c eq 3"
        assert and_(a) == "a eq 1"
        assert not_(or_(a, b)) == "not (a eq 1 or b eq 2)"
        assert not_(a) == "not (a eq 1)"

    def test_plain_string_operands_are_kept_whole(self):
        assert and_("statecode eq 0 or statecode eq 1", eq("name", "x")) == \
            "(statecode eq 0 or statecode eq 1) and name eq 'x'"
        assert and_("statecode eq 0") == "(statecode eq 0)"

    def test_empty_is_an_error(self):
        with pytest.raises(ValueError):
            and_()
        with pytest.raises(ValueError):
            or_()
        with pytest.raises(ValueError):
            any_of("id", [])
        with pytest.raises(ValueError):
            and_("  ")

    def test_any_of(self):
        g2 = "5d115c9c-44e3-ea11-bb43-000d3a2feca1"
        assert any_of("id", [Guid(G), Guid(g2)]) == f"id eq {G} or id eq {g2}"
        assert any_of("number", ["A"]) == "number eq 'A'"
        assert and_(any_of("number", ["A", "B"]), eq("blocked", False)) == \
            "(number eq 'A' or number eq 'B') and blocked eq false"

    def test_functions(self):
        assert contains("name", "O'B") == "contains(name,'O''B')"
        assert startswith("displayName", "Ad") == "startswith(displayName,'Ad')"
        assert endswith("email", "@x.com") == "endswith(email,'@x.com')"
        with pytest.raises(TypeError):
            contains("name", 3)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            contains("name", Guid(G))

    @pytest.mark.parametrize("bad", ["", "a b", "a eq 1 or b", "name)", "x'", "1abc", "a//b", "a/", "$filter",
                                     "a;b", "name eq 'x' or 1 eq 1"])
    def test_field_names_are_validated(self, bad):
        with pytest.raises(ValueError):
            eq(bad, 1)

    def test_select_and_orderby(self):
        assert odata.select(["id", "displayName", "_ownerid_value"]) == "id,displayName,_ownerid_value"
        assert odata.select("id, number") == "id,number"
        assert odata.orderby(["displayName desc", "number"]) == "displayName desc,number"
        with pytest.raises(ValueError):
            odata.select(["id", "x,y"])
        with pytest.raises(ValueError):
            odata.orderby(["name; drop"])


class TestInjection:
    """Hostile values stay inside one string literal: the filter keeps exactly its shape."""

    @pytest.mark.parametrize("value, expected", [
        ("x' or name ne 'x", "name eq 'x'' or name ne ''x'"),
        ("') or (1 eq 1", "name eq ''') or (1 eq 1'"),
        ("a or b", "name eq 'a or b'"),
        ("' or '' eq '", "name eq ''' or '''' eq '''"),
        (G, f"name eq '{G}'"),
        (f"{G}) or (id ne {G}", f"name eq '{G}) or (id ne {G}'"),
        ("x&$top=1", "name eq 'x&$top=1'"),
        ("100%", "name eq '100%'"),
    ])
    def test_exact_strings(self, value, expected):
        assert eq("name", value) == expected

    def test_literal_round_trip(self):
        """Undoubling the literal gives back the exact value (no quote escapes the literal)."""
        for value in ["'", "''", "a'b'c", "' or 1 eq 1 or '", "\\'", "é'ü"]:
            lit = literal(value)
            assert lit[0] == lit[-1] == "'"
            inner = lit[1:-1]
            assert "'" not in inner.replace("''", "")
            assert inner.replace("''", "'") == value


class TestQueryString:
    def test_encoded_once_with_percent_twenty(self):
        expr = eq("displayName", "O'Brien & Co + 50% #1 /x?y=z")
        qs = query_string({"$filter": expr, "$select": "id,number"})
        assert qs == ("$filter=displayName%20eq%20'O''Brien%20%26%20Co%20%2B%2050%25%20%231%20%2Fx%3Fy%3Dz'"
                      "&$select=id,number")
        name, value = qs.split("&")[0].split("=", 1)
        assert unquote(value) == expr  # decoding once gives back the exact expression

    def test_none_values_are_skipped(self):
        assert query_string({"$filter": None, "$top": 5}) == "$top=5"
        assert query_string({}) == ""

    def test_already_encoded_looking_text_is_encoded_again_as_data(self):
        assert query_string({"$filter": eq("name", "a%20b")}) == "$filter=name%20eq%20'a%2520b'"

    def test_non_ascii(self):
        assert query_string({"$filter": eq("city", "Zürich")}) == "$filter=city%20eq%20'Z%C3%BCrich'"
