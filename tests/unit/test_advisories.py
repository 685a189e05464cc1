"""security/advisories/ and the advisories shipped in the package.

Every OSV record in security/advisories/ (the template included) and in
src/hardserve/_advisories/ meets security/advisories/osv-schema.json; the package ships
exactly the real records (not the template, not the schema); `affecting()` reads the OSV
ranges as the format defines them, shown on synthetic records that are never committed as
advisories.
"""

from __future__ import annotations

import copy
import json
import re
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from hardserve import __version__, advisories
from hardserve.advisories import affecting, bundled_advisories, in_range, summary_line
from hardserve.versions import InvalidVersion, version_key

ROOT = Path(__file__).resolve().parents[2]
FOLDER = ROOT / "security" / "advisories"
SCHEMA_PATH = FOLDER / "osv-schema.json"
TEMPLATE_PATH = FOLDER / "TEMPLATE.json"
PACKAGED = ROOT / "src" / "hardserve" / "_advisories"
NOT_ADVISORIES = {SCHEMA_PATH.name, TEMPLATE_PATH.name}
ADVISORY_NAME_RE = re.compile(r"HSEC-[0-9]{4}-[0-9]+\.json")


def load(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def validator() -> jsonschema.Draft202012Validator:
    schema = load(SCHEMA_PATH)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )


def errors(record: Any) -> list[str]:
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '(record)'}: {e.message}"
        for e in validator().iter_errors(record)
    ]


def records_to_validate() -> list[Path]:
    found = sorted(p for p in FOLDER.glob("*.json") if p.name != SCHEMA_PATH.name)
    return found + sorted(PACKAGED.glob("*.json"))


def real_advisories() -> list[Path]:
    return sorted(p for p in FOLDER.glob("*.json") if p.name not in NOT_ADVISORIES)


# -- the folder and the schema --------------------------------------------------------------


def test_the_template_is_among_the_records_validated() -> None:
    # Guards against the validation passing because no file was read.
    assert TEMPLATE_PATH in records_to_validate()


@pytest.mark.parametrize(
    "path", records_to_validate(), ids=lambda p: p.relative_to(ROOT).as_posix()
)
def test_record_meets_the_schema(path: Path) -> None:
    assert errors(load(path)) == []


def test_every_file_in_the_folder_is_a_record_the_schema_or_a_page() -> None:
    for path in FOLDER.iterdir():
        assert path.name in NOT_ADVISORIES | {"README.md"} or ADVISORY_NAME_RE.fullmatch(
            path.name
        ), f"security/advisories/{path.name}: not HSEC-<year>-<number>.json"


def test_every_advisory_is_named_after_its_id_and_holds_no_template_text() -> None:
    # One test over all of them (none is published yet): a parametrized test over an empty
    # list would be skipped, not run.
    for path in real_advisories():
        record = load(path)
        assert path.name == f"{record['id']}.json"
        text = path.read_text(encoding="utf-8")
        assert "TEMPLATE" not in text and "OWNER" not in text and "HSEC-0000-0" not in text
    # The check itself: the template is what it would refuse.
    template_text = TEMPLATE_PATH.read_text(encoding="utf-8")
    assert "HSEC-0000-0" in template_text or "TEMPLATE" in template_text


def template() -> dict[str, Any]:
    record: dict[str, Any] = load(TEMPLATE_PATH)
    return record


@pytest.mark.parametrize(
    ("change", "where"),
    [
        (lambda r: r.pop("modified"), "(record)"),
        (lambda r: r.update(id="GHSA-xxxx-xxxx-xxxx"), "id"),
        (lambda r: r.update(published="2025-01-01 00:00:00"), "published"),
        (lambda r: r.update(summary="two\nlines"), "summary"),
        (lambda r: r.update(unknown_field=1), "(record)"),
        (lambda r: r["severity"][0].update(score="CVSS:4.0/AV:N"), "severity/0/score"),
        (lambda r: r["affected"][0]["package"].update(name="gunicorn"), "affected/0/package/name"),
        (
            lambda r: r["affected"][0]["package"].update(ecosystem="npm"),
            "affected/0/package/ecosystem",
        ),
        (
            lambda r: r["affected"][0]["ranges"][0].update(events=[{"fixed": "0.2.0"}]),
            "affected/0/ranges/0/events",
        ),
        (
            lambda r: r["affected"][0]["ranges"][0]["events"].append({"last_affected": "0.1.0"}),
            "affected/0/ranges/0/events",
        ),
        (
            lambda r: r["affected"][0]["ranges"][0]["events"].append(
                {"introduced": "0.3", "fixed": "0.4"}
            ),
            "affected/0/ranges/0/events/2",
        ),
        (lambda r: r["affected"][0]["ranges"][0].update(type="GIT"), "affected/0/ranges/0"),
        (lambda r: r["affected"][0].pop("ranges"), "affected/0"),
        (lambda r: r["references"][0].update(type="BLOG"), "references/0/type"),
        (lambda r: r["references"][0].update(url="http://example.com/"), "references/0/url"),
    ],
)
def test_the_schema_refuses_a_broken_record(change: Any, where: str) -> None:
    record = template()
    assert errors(record) == []
    change(record)
    found = errors(record)
    assert found, "the schema accepted a broken record"
    assert any(message.startswith(f"{where}: ") for message in found), found


def test_the_readme_says_no_advisory_is_published_while_there_is_none() -> None:
    readme = (FOLDER / "README.md").read_text(encoding="utf-8")
    says_none = "No advisory has been published for hardserve yet." in readme
    assert says_none == (real_advisories() == [])
    for target in ("osv-schema.json", "TEMPLATE.json"):
        assert f"]({target})" in readme


def test_the_security_readme_indexes_the_advisories() -> None:
    readme = (ROOT / "security" / "README.md").read_text(encoding="utf-8")
    assert "](advisories/README.md)" in readme


# -- the copy in the package ----------------------------------------------------------------


def test_the_package_ships_exactly_the_real_advisories() -> None:
    source = {p.name: p.read_bytes() for p in real_advisories()}
    shipped = {p.name: p.read_bytes() for p in PACKAGED.glob("*.json")}
    assert shipped == source, "copy security/advisories/HSEC-*.json to src/hardserve/_advisories/"


def test_bundled_advisories_reads_the_package_copies() -> None:
    assert bundled_advisories() == sorted(
        (load(p) for p in PACKAGED.glob("*.json")), key=lambda r: r["id"]
    )


def test_the_package_data_glob_covers_the_advisories() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    globs = project["tool"]["setuptools"]["package-data"]["hardserve"]
    assert "_advisories/*.json" in globs


def test_bundled_advisories_reads_every_json_file_of_its_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = synthetic([{"introduced": "0"}, {"fixed": "0.2.0"}], id="HSEC-2099-2")
    (tmp_path / "HSEC-2099-2.json").write_text(json.dumps(record))
    (tmp_path / "HSEC-2099-1.json").write_text(json.dumps(synthetic([{"introduced": "0"}])))
    (tmp_path / "notes.txt").write_text("not an advisory")
    monkeypatch.setattr(advisories.resources, "files", lambda _package: tmp_path)
    assert [r["id"] for r in bundled_advisories()] == ["HSEC-2099-1", "HSEC-2099-2"]
    (tmp_path / "HSEC-2099-3.json").write_text("[]")
    with pytest.raises(ValueError, match=r"HSEC-2099-3\.json: not an OSV record"):
        bundled_advisories()


# -- affecting() on synthetic records -------------------------------------------------------


def synthetic(
    events: list[dict[str, str]] | None = None,
    *,
    id: str = "HSEC-2099-1",
    versions: list[str] | None = None,
    range_type: str = "ECOSYSTEM",
    package: str = "hardserve",
    ecosystem: str = "PyPI",
) -> dict[str, Any]:
    """A record made from the template; it meets the schema (checked where it matters)."""
    record = copy.deepcopy(template())
    record["id"] = id
    entry = record["affected"][0]
    entry["package"] = {"ecosystem": ecosystem, "name": package}
    if events is None:
        del entry["ranges"]
    else:
        entry["ranges"] = [{"type": range_type, "events": events}]
    if versions is not None:
        entry["versions"] = versions
    return record


def ids(version: str, *records: dict[str, Any]) -> list[str]:
    return [r["id"] for r in affecting(version, records)]


@pytest.mark.parametrize("range_type", ["ECOSYSTEM", "SEMVER"])
@pytest.mark.parametrize(
    ("events", "affected", "unaffected"),
    [
        # introduced then fixed: [introduced, fixed)
        (
            [{"introduced": "0.2.0"}, {"fixed": "0.3.1"}],
            ["0.2.0", "0.2", "0.3.0", "0.3.1rc1"],
            ["0.1.9", "0.3.1", "0.4", "0.2.0rc1"],
        ),
        # from the first version on
        (
            [{"introduced": "0"}, {"fixed": "0.1.1"}],
            ["0.0.1", "0.1.0", "0.1.1.dev0"],
            ["0.1.1", "0.1.1.post1", "1.0"],
        ),
        # last_affected: [introduced, last_affected]
        (
            [{"introduced": "0.1.0"}, {"last_affected": "0.1.4"}],
            ["0.1.0", "0.1.4", "0.1.4+local"],
            ["0.0.9", "0.1.4.post1", "0.1.5"],
        ),
        # never fixed
        ([{"introduced": "1.0.0"}], ["1.0.0", "7.3"], ["0.9", "1.0.0rc2"]),
        # two ranges in one: introduced again after a fix (events in any order)
        (
            [
                {"fixed": "0.3.0"},
                {"introduced": "0.5.0"},
                {"introduced": "0.1.0"},
                {"fixed": "0.6.0"},
            ],
            ["0.1.0", "0.2.9", "0.5.0", "0.5.9"],
            ["0.0.1", "0.3.0", "0.4.9", "0.6.0"],
        ),
    ],
)
def test_ranges(
    range_type: str, events: list[dict[str, str]], affected: list[str], unaffected: list[str]
) -> None:
    record = synthetic(events, range_type=range_type)
    assert errors(record) == []
    for version in affected:
        assert ids(version, record) == ["HSEC-2099-1"], version
        assert in_range(version, events), version
    for version in unaffected:
        assert ids(version, record) == [], version
        assert not in_range(version, events), version


def test_an_explicit_versions_list() -> None:
    record = synthetic(None, versions=["0.1.0", "0.1.2"])
    assert errors(record) == []
    assert ids("0.1.0", record) == ["HSEC-2099-1"]
    assert ids("0.1.2.0", record) == ["HSEC-2099-1"]  # the same version, written longer
    assert ids("0.1.1", record) == []


def test_a_versions_list_beside_a_range_adds_to_it() -> None:
    record = synthetic([{"introduced": "0.3.0"}], versions=["0.1.0"])
    assert ids("0.1.0", record) == ids("0.3.5", record) == ["HSEC-2099-1"]
    assert ids("0.2.0", record) == []


def test_git_ranges_and_limit_events_are_not_evaluated() -> None:
    record = synthetic([{"introduced": "0"}], range_type="GIT")
    record["affected"][0]["ranges"][0]["repo"] = "https://github.com/OWNER/hardserve"
    assert errors(record) == []
    assert ids("0.1.0", record) == []
    assert in_range("0.5", [{"introduced": "0"}, {"limit": "0.2"}])


def test_other_packages_do_not_count() -> None:
    gunicorn = synthetic([{"introduced": "0"}], package="gunicorn")
    npm = synthetic([{"introduced": "0"}], ecosystem="npm")
    assert ids("0.1.0", gunicorn, npm) == []
    # PyPI names compare normalized
    assert ids("0.1.0", synthetic([{"introduced": "0"}], package="HardServe")) == ["HSEC-2099-1"]


def test_a_withdrawn_advisory_affects_nothing() -> None:
    record = synthetic([{"introduced": "0"}])
    record["withdrawn"] = "2099-02-01T00:00:00Z"
    assert errors(record) == []
    assert ids("0.1.0", record) == []


def test_a_record_whose_versions_cannot_be_read_counts_as_affecting() -> None:
    record = synthetic([{"introduced": "0"}, {"fixed": "not a version"}])
    assert ids("9.9.9", record) == ["HSEC-2099-1"]


def test_several_records_keep_their_order() -> None:
    a = synthetic([{"introduced": "0"}], id="HSEC-2099-7")
    b = synthetic([{"introduced": "0"}, {"fixed": "0.0.5"}], id="HSEC-2099-3")
    c = synthetic([{"introduced": "0"}], id="HSEC-2099-5")
    assert ids("0.1.0", a, b, c) == ["HSEC-2099-7", "HSEC-2099-5"]


def test_the_running_version_is_affected_by_no_bundled_advisory() -> None:
    # A release never ships with an advisory against itself.
    assert affecting(__version__, bundled_advisories()) == []


def test_summary_line() -> None:
    record = synthetic(
        [{"introduced": "0"}, {"fixed": "0.1.10"}, {"introduced": "0.2"}, {"fixed": "0.2.3"}]
    )
    record["summary"] = "Request smuggling with a bare CR"
    assert summary_line(record) == (
        "HSEC-2099-1 (CVE-0000-0000, GHSA-xxxx-xxxx-xxxx) Request smuggling with a bare CR"
        " [fixed in 0.1.10, 0.2.3]"
    )


# -- the version order ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "ordered",
    [
        [
            "0.1.dev1",
            "0.1a1",
            "0.1a2.dev1",
            "0.1a2",
            "0.1b1",
            "0.1rc1",
            "0.1",
            "0.1.post1.dev0",
            "0.1.post1",
            "0.1.1",
            "0.2",
            "1!0.0.1",
        ],
        ["0.9", "0.10", "0.16.0", "0.16.1", "1.0"],
    ],
)
def test_versions_sort_as_pypi_sorts_them(ordered: list[str]) -> None:
    keys = [version_key(v) for v in ordered]
    assert keys == sorted(keys)
    assert len(set(keys)) == len(keys)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("0.16", "0.16.0"),
        ("1.0", "v1.0.0"),
        ("1.0rc1", "1.0-RC-1"),
        ("1.0.post2", "1.0-2"),
        ("1.0", "1.0+ubuntu1"),
    ],
)
def test_spellings_of_the_same_version(a: str, b: str) -> None:
    assert version_key(a) == version_key(b)


@pytest.mark.parametrize("text", ["", "latest", "1.0-beta-x", "1..0", "0x10"])
def test_what_is_not_a_version(text: str) -> None:
    with pytest.raises(InvalidVersion):
        version_key(text)


def test_security_md_names_the_current_minor_release_as_supported() -> None:
    minor = ".".join(__version__.split(".")[:2])
    text = (ROOT / "SECURITY.md").read_text(encoding="utf-8")
    assert f"| {minor}.x (the latest minor release) | yes" in text
