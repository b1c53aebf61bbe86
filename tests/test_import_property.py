"""Property: any export document is either imported exactly (every record stored as it
reads, merged with what was stored by the 'faster' rule, records of unknown or changed
kernels counted as refused) or refused in one line with the database unchanged.

Hypothesis derives documents from a valid export by replacing, adding or deleting up to
two fields with arbitrary JSON values; a fixed example budget and derandomize keep the
run the same on every machine."""

import copy
import json
import sqlite3
import tempfile
from pathlib import Path

import mhfgen  # noqa: F401 - first: switches Triton's interpreter on

# isort: split
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_import_strict import winner

from mhfgen import registry
from mhfgen.cli import main
from mhfgen.codegen import template_hash
from mhfgen.tuning import db as dbmod
from mhfgen.tuning.db import KEY_COLUMNS, TuningDB
from mhfgen.tuning.exchange import ExchangeError, export_winners, parse_export

EXAMPLES = 150
PROVENANCE = (
    "ms",
    "tflops",
    "default_ms",
    "speedup",
    "timer",
    "trials",
    "mhfgen_version",
    "torch_version",
    "created",
    "code_hash",
)
FLOATS = {"ms", "tflops", "default_ms", "speedup"}
DEFAULTS = {
    "tflops": 0.0,
    "timer": "",
    "trials": 0,
    "mhfgen_version": "",
    "torch_version": "",
    "created": "",
    "code_hash": None,
    "default_ms": None,
    "speedup": None,
}
CONFIG_FIELDS = sorted(registry.get("flash_mhf_fwd").Config().as_dict())


def _base(folder: Path) -> tuple[dict, dict]:
    """(an export of two records, the one record already stored in the target)."""
    source = folder / "source.sqlite"
    with TuningDB.open(source) as db:
        for tokens in (1024, 4096, 16384):
            db.put_winner(winner(tokens))
    with TuningDB.open(source, readonly=True) as db:
        doc = export_winners(db)
    stored = doc["records"].pop()  # 16384 tokens: in the target before the import
    return doc, stored


BASE_DIR = Path(tempfile.mkdtemp(prefix="mhfgen-property-"))


@pytest.fixture(scope="module")
def base():
    return _base(BASE_DIR)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=6)
    | st.sampled_from(
        [
            "",
            "9.0",
            "abc",
            "fwd",
            "bwd_dq",
            "flash_mhf_fwd",
            "flash_mhf_bwd_dq",
            "nope",
            "\x1b[31m",
            "NVIDIA H200",
            "float32",
        ]
    ),
    lambda inner: (
        st.lists(inner, max_size=2) | st.dictionaries(st.text(max_size=3), inner, max_size=2)
    ),
    max_leaves=3,
)
field_names = st.sampled_from(
    [
        *KEY_COLUMNS,
        *PROVENANCE,
        "config",
        "kernel",
        "surprise",
        *(f"config.{f}" for f in CONFIG_FIELDS),
        "config.extra",
        "@schema_version",
        "@records",
    ]
)
DELETE = object()
mutations = st.lists(
    st.tuples(st.integers(0, 1), field_names, st.one_of(json_values, st.just(DELETE))),
    min_size=1,
    max_size=2,
)


def _mutate(doc: dict, changes) -> dict:
    doc = copy.deepcopy(doc)
    for index, field, value in changes:
        if field.startswith("@"):
            target, name = doc, field[1:]
        else:
            record = (
                doc["records"][index]
                if isinstance(doc.get("records"), list) and len(doc["records"]) > index
                else None
            )
            if not isinstance(record, dict):
                continue
            if field.startswith("config."):
                target, name = record.get("config"), field.split(".", 1)[1]
                if not isinstance(target, dict):
                    continue
            else:
                target, name = record, field
        if value is DELETE:
            target.pop(name, None)
        else:
            target[name] = value
    return doc


def _dump(path: Path) -> list:
    conn = sqlite3.connect(path)
    try:
        return sorted(conn.execute("SELECT * FROM winners").fetchall(), key=repr)
    finally:
        conn.close()


def _key(rec: dict) -> tuple:
    return tuple(rec[c] for c in KEY_COLUMNS)


def _expected(rec: dict) -> dict:
    """What an accepted record must read back as: absent or null provenance takes its
    default, numbers as the floats and ints they are."""
    out = {c: rec[c] for c in KEY_COLUMNS if c in rec}
    if "op" not in out:
        out["op"] = registry.get(rec["variant"]).op
    # as the variant reads it: a knob newer than the export takes its documented default
    out["config"] = registry.get(out["variant"]).config_from_dict(rec["config"]).as_dict()
    for name in PROVENANCE:
        value = rec.get(name)
        value = DEFAULTS.get(name) if value is None else value
        out[name] = float(value) if name in FLOATS and value is not None else value
    return out


@settings(
    max_examples=EXAMPLES,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(changes=mutations)
def test_any_document_is_imported_exactly_or_refused_with_nothing_changed(
    base, changes, monkeypatch
):
    monkeypatch.setattr(dbmod.paths, "shipped_db_path", lambda: BASE_DIR / "none.sqlite")
    good, stored = base
    doc = _mutate(good, changes)
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        target = folder / "target.sqlite"
        with TuningDB.open(target) as db:
            before_records = parse_export(dict(good, records=[stored]))
            db.put_winners(before_records)
        before = _dump(target)
        source = folder / "doc.json"
        source.write_text(json.dumps(doc))
        try:
            parse_export(json.loads(source.read_text()))
            refused_by_parse = False
        except ExchangeError:
            refused_by_parse = True
        code = main(["import", str(source), "--db", str(target)])
        if refused_by_parse:
            assert code == 2
            assert _dump(target) == before
            return
        assert code in (0, 1)
        model = {_key(_expected(stored)): _expected(stored)}
        refused = 0
        for rec in doc["records"]:
            name = rec.get("variant", rec.get("kernel"))
            if name not in registry.stems() or rec["template_hash"] != template_hash(name):
                refused += 1  # unknown variant, or its code changed since
                continue
            new = _expected(rec)
            old = model.get(_key(new))
            if old is None or new["ms"] < old["ms"]:
                model[_key(new)] = new
        assert code == (1 if refused else 0)
        with TuningDB.open(target, readonly=True) as db:
            got = {_key(r): r for r in export_winners(db)["records"]}
        assert got == model
