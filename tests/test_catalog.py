import pandas as pd
import pytest
from PIL import Image

from zoobot_core.catalog import CatalogConfig, CatalogError, accounting, assign_chunks, chunk_count, chunk_digests, validate_catalog

LABELS = ("a_yes", "a_no")


def _image(path, mode="RGB", size=(20, 20)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color=128 if mode in ("L", "I;16") else (10, 20, 30)).save(path)


@pytest.fixture
def catalog_dir(tmp_path):
    for i in range(8):
        _image(tmp_path / "img" / f"g{i}.png")
    (tmp_path / "img" / "empty.png").write_bytes(b"")
    (tmp_path.parent / "outside.png").write_bytes(b"x")
    return tmp_path


def _write(tmp_path, rows, name="cat.csv"):
    df = pd.DataFrame(rows)
    path = tmp_path / name
    df.to_parquet(path) if name.endswith(".parquet") else df.to_csv(path, index=False)
    return path


def _cfg(**kw):
    return CatalogConfig(label_cols=LABELS, max_quarantine_fraction=1.0, **kw)


def test_every_row_is_either_validated_or_quarantined_with_its_reason(catalog_dir):
    rows = [
        {"id_str": "ok1", "file_loc": "img/g0.png", "a_yes": 3, "a_no": 1},
        {"id_str": "ok_unlabelled", "file_loc": "img/g1.png", "a_yes": None, "a_no": None},
        {"id_str": "", "file_loc": "img/g2.png", "a_yes": 1, "a_no": 1},
        {"id_str": "dup", "file_loc": "img/g3.png", "a_yes": 1, "a_no": 1},
        {"id_str": "dup", "file_loc": "img/g4.png", "a_yes": 1, "a_no": 1},
        {"id_str": "nopath", "file_loc": None, "a_yes": 1, "a_no": 1},
        {"id_str": "gone", "file_loc": "img/missing.png", "a_yes": 1, "a_no": 1},
        {"id_str": "empty", "file_loc": "img/empty.png", "a_yes": 1, "a_no": 1},
        {"id_str": "escape", "file_loc": "../outside.png", "a_yes": 1, "a_no": 1},
        {"id_str": "partial", "file_loc": "img/g5.png", "a_yes": 2, "a_no": None},
        {"id_str": "negative", "file_loc": "img/g6.png", "a_yes": -1, "a_no": 2},
        {"id_str": "fraction", "file_loc": "img/g7.png", "a_yes": 1.5, "a_no": 2},
        {"id_str": "text", "file_loc": "img/g7.png", "a_yes": "many", "a_no": 2},
    ]
    validated, quarantine = validate_catalog(_write(catalog_dir, rows), _cfg())
    assert list(validated["id_str"]) == ["ok1", "ok_unlabelled"]
    assert validated.set_index("id_str")["labelled"].to_dict() == {"ok1": True, "ok_unlabelled": False}
    reasons = dict(zip(quarantine["row"], quarantine["reason"]))
    assert reasons == {
        2: "missing_id", 3: "duplicate_id", 4: "duplicate_id", 5: "missing_path", 6: "missing_file",
        7: "empty_file", 8: "path_outside_root", 9: "partial_labels", 10: "invalid_votes", 11: "invalid_votes", 12: "invalid_votes",
    }
    assert quarantine["message"].str.len().gt(10).all()
    assert len(validated) + len(quarantine) == len(rows)


def test_user_column_names_parquet_and_extra_columns_are_kept(catalog_dir):
    rows = [{"iauname": f"J{i}", "png": f"img/g{i}.png", "a_yes": i, "a_no": 1, "redshift": 0.1 * i} for i in range(3)]
    validated, quarantine = validate_catalog(_write(catalog_dir, rows, "cat.parquet"), _cfg(id_column="iauname", file_column="png"))
    assert list(validated["id_str"]) == ["J0", "J1", "J2"]
    assert validated["redshift"].tolist() == pytest.approx([0.0, 0.1, 0.2])
    assert all(p.startswith(str(catalog_dir)) for p in validated["file_loc"])
    assert quarantine.empty


def test_image_root_overrides_the_catalog_folder(catalog_dir, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    path = _write(elsewhere, [{"id_str": "x", "file_loc": "g0.png", "a_yes": 1, "a_no": 0}])
    validated, _ = validate_catalog(path, _cfg(image_root=str(catalog_dir / "img")))
    assert validated.loc[0, "file_loc"] == str((catalog_dir / "img" / "g0.png").resolve())


def test_missing_label_columns_name_the_columns_and_the_fix(catalog_dir):
    path = _write(catalog_dir, [{"id_str": "x", "file_loc": "img/g0.png", "a_yes": 1}])
    with pytest.raises(CatalogError, match=r"a_no.*question_suffix"):
        validate_catalog(path, _cfg())


def test_empty_catalog_is_an_error(catalog_dir):
    path = catalog_dir / "empty.csv"
    path.write_text("id_str,file_loc,a_yes,a_no\n")
    with pytest.raises(CatalogError, match="no rows"):
        validate_catalog(path, _cfg())


def test_too_many_quarantined_rows_fail_with_the_reasons(catalog_dir):
    rows = [{"id_str": f"g{i}", "file_loc": f"img/missing{i}.png", "a_yes": 1, "a_no": 1} for i in range(3)]
    rows.append({"id_str": "ok", "file_loc": "img/g0.png", "a_yes": 1, "a_no": 1})
    with pytest.raises(CatalogError, match=r"3 of 4 rows.*max_quarantine_fraction.*missing_file"):
        validate_catalog(_write(catalog_dir, rows), CatalogConfig(label_cols=LABELS, max_quarantine_fraction=0.05))


def test_unlabelled_rows_can_be_refused(catalog_dir):
    rows = [{"id_str": "u", "file_loc": "img/g0.png", "a_yes": None, "a_no": None}, {"id_str": "l", "file_loc": "img/g1.png", "a_yes": 1, "a_no": 0}]
    validated, quarantine = validate_catalog(_write(catalog_dir, rows), _cfg(allow_unlabelled=False))
    assert list(validated["id_str"]) == ["l"]
    assert list(quarantine["reason"]) == ["missing_labels"]


def test_chunks_follow_a_hash_of_the_id_not_row_order(catalog_dir):
    rows = [{"id_str": f"g{i}", "file_loc": f"img/g{i}.png", "a_yes": 1, "a_no": 1} for i in range(8)]
    a, _ = validate_catalog(_write(catalog_dir, rows), _cfg(chunk_size=3))
    b, _ = validate_catalog(_write(catalog_dir, rows[::-1], "rev.csv"), _cfg(chunk_size=3))
    pd.testing.assert_frame_equal(a.drop(columns="row"), b.drop(columns="row"))
    assert a["id_str"].tolist() == sorted(a["id_str"])  # sorted by id; chunks by hash: 8 / 3 -> 2 chunks
    assert a["chunk"].tolist() == assign_chunks(a["id_str"], 2).tolist() and set(a["chunk"]) == {0, 1}
    assert chunk_digests(a) == chunk_digests(b)


def test_adding_or_removing_galaxies_moves_no_other_galaxy_to_another_chunk():
    ids = pd.Series([f"J{i:06d}" for i in range(5_000)])
    n = chunk_count(len(ids), 500)
    chunks = pd.Series(assign_chunks(ids, n), index=ids)
    assert n == 8 and chunks.value_counts().between(500, 750).all()  # 625 each on average
    more = pd.concat([ids, pd.Series(["J999998", "J999999"])], ignore_index=True)
    assert chunk_count(len(more), 500) == n
    moved = pd.Series(assign_chunks(more, n), index=more)
    assert (moved[ids] == chunks[ids]).all()
    fewer = ids.drop([10, 20])
    assert (pd.Series(assign_chunks(fewer, n), index=fewer)[fewer] == chunks[fewer]).all()
    # only the chunks that gained or lost a galaxy get a new digest
    table = lambda i: pd.DataFrame({"id_str": i, "file_loc": "/img/" + i + ".png", "chunk": assign_chunks(i, n)})
    before = chunk_digests(table(ids))
    for edited, touched in ((more, moved[["J999998", "J999999"]]), (fewer, chunks[ids[[10, 20]]])):
        after = chunk_digests(table(edited))
        assert {c for c in after if after[c] != before.get(c)} == set(touched)


def test_chunk_count_is_the_nearest_power_of_two():
    assert [chunk_count(n, 500) for n in (1, 500, 700, 800, 1_000, 1_500, 3_000, 300_000)] == [1, 1, 1, 2, 2, 4, 8, 512]
    with pytest.raises(ValueError, match="chunk_size"):
        chunk_count(10, 0)


def test_chunks_and_digests_are_the_same_on_every_machine():
    """Fixed values: a chunk must not depend on the Python process (hash randomisation), the platform or pandas."""
    import hashlib

    assert assign_chunks(pd.Series([f"J{i:06d}" for i in range(8)]), 8).tolist() == [7, 5, 7, 7, 7, 5, 6, 3]
    table = pd.DataFrame({"id_str": ["b", "a"], "file_loc": ["/x/b.png", "/x/a.png"], "chunk": [0, 0]})
    assert chunk_digests(table) == {0: hashlib.sha256(b"a\0/x/a.png\nb\0/x/b.png\n").hexdigest()}


def test_a_chunk_digest_counts_ids_and_paths_not_labels():
    table = pd.DataFrame({"id_str": ["a", "b"], "file_loc": ["/x/a.png", "/x/b.png"], "chunk": [0, 0], "a_yes": [1, 2]})
    same = chunk_digests(table.assign(a_yes=[5, 6]))
    assert same == chunk_digests(table)
    assert chunk_digests(table.assign(file_loc=["/y/a.png", "/x/b.png"])) != same


def test_accounting_refuses_lost_rows():
    ready = pd.DataFrame({"labelled": [True, False]})
    quarantine = pd.DataFrame({"reason": ["missing_file"]})
    assert accounting(3, ready, quarantine)["quarantined_by_reason"] == {"missing_file": 1}
    with pytest.raises(RuntimeError, match="accounting"):
        accounting(4, ready, quarantine)


def test_an_answer_above_its_question_total_is_quarantined(catalog_dir):
    rows = [
        {"id_str": "fine", "file_loc": "img/g0.png", "a_yes": 3, "a_no": 1, "a_total-votes": 4},
        {"id_str": "too_many", "file_loc": "img/g1.png", "a_yes": 9, "a_no": 1, "a_total-votes": 4},
    ]
    validated, quarantine = validate_catalog(_write(catalog_dir, rows), _cfg(question_totals=(("a_total-votes", LABELS),)))
    assert list(validated["id_str"]) == ["fine"]
    assert list(quarantine["reason"]) == ["votes_exceed_total"] and "a_total-votes" in quarantine.loc[0, "message"]
    # a catalog without total columns is not checked against them
    validated, _ = validate_catalog(_write(catalog_dir, [{k: v for k, v in r.items() if k != "a_total-votes"} for r in rows], "nototal.csv"),
                                    _cfg(question_totals=(("a_total-votes", LABELS),)))
    assert len(validated) == 2


def test_nan_counts_in_some_columns_are_partial_labels(catalog_dir):
    path = catalog_dir / "nan.csv"
    path.write_text("id_str,file_loc,a_yes,a_no\nx,img/g0.png,NaN,3\n")
    _, quarantine = validate_catalog(path, _cfg())
    assert list(quarantine["reason"]) == ["partial_labels"]


def test_the_real_sample_validates_with_its_own_column_names(real_sample):
    from zoobot_core.catalog import CatalogConfig

    cfg = CatalogConfig(id_column="iauname", file_column="local_png_loc", label_cols=("ring",), label_kind="values", max_quarantine_fraction=0.0)
    validated, quarantine = validate_catalog(real_sample / "catalog.csv", cfg)
    assert len(validated) == 104 and quarantine.empty
    assert validated["ring"].sum() == pd.read_csv(real_sample / "catalog.csv")["ring"].sum()
    assert validated["smooth-or-featured_featured-or-disk_fraction"].between(0, 1).all()  # extra columns kept


def test_class_labels_that_are_missing_not_numbers_fractional_or_outside_the_classes_are_quarantined(catalog_dir):
    rows = [
        {"id_str": "zero", "file_loc": "img/g0.png", "ring": 0},
        {"id_str": "one", "file_loc": "img/g1.png", "ring": 1.0},
        {"id_str": "missing", "file_loc": "img/g2.png", "ring": None},
        {"id_str": "text", "file_loc": "img/g3.png", "ring": "yes"},
        {"id_str": "fraction", "file_loc": "img/g4.png", "ring": 0.99},
        {"id_str": "two", "file_loc": "img/g5.png", "ring": 2},
        {"id_str": "negative", "file_loc": "img/g6.png", "ring": -1},
    ]
    config = CatalogConfig(label_cols=("ring",), label_kind="classes", n_classes=2, allow_unlabelled=False, max_quarantine_fraction=1.0)
    validated, quarantine = validate_catalog(_write(catalog_dir, rows), config)
    assert validated.set_index("id_str")["ring"].to_dict() == {"zero": 0, "one": 1}
    q = quarantine.set_index("id_str")
    assert q["reason"].to_dict() == {"missing": "missing_labels", "text": "invalid_label", "fraction": "fractional_label",
                                     "two": "label_out_of_range", "negative": "label_out_of_range"}
    assert "'yes'" in q.loc["text", "message"] and "0.99" in q.loc["fraction", "message"] and "label_threshold" in q.loc["fraction", "message"]
    assert "0..1" in q.loc["two", "message"]


def test_a_label_threshold_turns_scores_into_binary_classes(catalog_dir):
    rows = [{"id_str": f"g{i}", "file_loc": f"img/g{i}.png", "ring": value} for i, value in enumerate([0.99, 0.5, 0.49, 0.0, None])]
    config = CatalogConfig(label_cols=("ring",), label_kind="classes", label_threshold=0.5, allow_unlabelled=False, max_quarantine_fraction=1.0)
    validated, quarantine = validate_catalog(_write(catalog_dir, rows), config)
    assert validated.set_index("id_str")["ring"].to_dict() == {"g0": 1, "g1": 1, "g2": 0, "g3": 0}
    assert quarantine.set_index("id_str")["reason"].to_dict() == {"g4": "missing_labels"}


SDSS_IDS = ["1237648720693755918", "1237648720693755919", "0000000000000000007"]


def test_long_numeric_ids_are_read_as_text_with_every_digit(catalog_dir):
    """GZ2 catalogs key on 19-digit dr7objids: with one blank id the column used to be read as floats, collapsing
    neighbouring ids into one and quarantining them all as duplicates. Ids and paths are text, always."""
    rows = [{"objid": i, "file_loc": f"img/g{k}.png", "a_yes": 1, "a_no": 2} for k, i in enumerate(SDSS_IDS)]
    rows.append({"objid": None, "file_loc": "img/g3.png", "a_yes": 1, "a_no": 2})
    path = catalog_dir / "gz2.csv"
    path.write_text("objid,file_loc,a_yes,a_no\n" + "".join(f"{r['objid'] or ''},{r['file_loc']},1,2\n" for r in rows))
    validated, quarantine = validate_catalog(path, _cfg(id_column="objid"))
    assert sorted(validated["id_str"]) == sorted(SDSS_IDS)  # leading zeros kept too
    assert quarantine["reason"].tolist() == ["missing_id"]


def test_parquet_ids_keep_their_digits_or_the_error_says_they_were_lost(catalog_dir):
    ints = pd.DataFrame({"objid": [int(i) for i in SDSS_IDS[:2]], "file_loc": ["img/g0.png", "img/g1.png"], "a_yes": [1, 1], "a_no": [2, 2]})
    validated, _ = validate_catalog(_write(catalog_dir, ints, "ints.parquet"), _cfg(id_column="objid"))
    assert sorted(validated["id_str"]) == SDSS_IDS[:2]
    small_floats = ints.assign(objid=[587.0, 588.0])  # whole numbers a float holds exactly: read as 587, 588
    validated, _ = validate_catalog(_write(catalog_dir, small_floats, "small.parquet"), _cfg(id_column="objid"))
    assert sorted(validated["id_str"]) == ["587", "588"]
    lost = ints.assign(objid=ints["objid"].astype(float))
    with pytest.raises(ValueError, match="'objid' of .*lost.parquet is stored as floating point.*write it as integers or text"):
        validate_catalog(_write(catalog_dir, lost, "lost.parquet"), _cfg(id_column="objid"))


def test_hostile_paths_are_quarantined_with_reasons_not_a_crash(tmp_path):
    """Any path a catalog row can hold ends in quarantine with its reason; one bad row never stops the catalog."""
    import os

    images = tmp_path / "img"
    for i in range(3):
        _image(images / f"g{i}.png")
    os.symlink("loop_b", images / "loop_a")
    os.symlink("loop_a", images / "loop_b")
    (images / "a_folder").mkdir()
    os.mkfifo(images / "a_fifo")
    store = tmp_path / "store"  # a content store (DVC, git-annex): the catalog's files are links into it
    (store / "objects").mkdir(parents=True)
    Image.new("RGB", (20, 20)).save(store / "objects" / "ab12", format="PNG")  # content-addressed: no extension
    os.symlink(store / "objects" / "ab12", images / "linked.png")
    rows = [
        ("ok", "img/g0.png"), ("loop", "img/loop_a"), ("folder", "img/a_folder"), ("fifo", "img/a_fifo"),
        ("device", "/dev/null"), ("long", "img/" + "x" * 5000 + ".png"), ("nul", "img/g1\x00.png"), ("linked", "img/linked.png"),
    ]
    (tmp_path / "cat.csv").write_bytes(
        b"id_str,file_loc,a_yes,a_no\n"
        + b"".join(f"{i},{p},1,2\n".encode("utf-8", "surrogateescape") for i, p in rows)
        + b"latin1,img/caf\xe9.png,1,2\n"  # a name in Latin-1 bytes, not UTF-8
        + b"g\xe9,img/g2.png,1,2\n"  # an id in Latin-1 bytes: kept, escaped
    )
    validated, quarantine = validate_catalog(tmp_path / "cat.csv", _cfg(image_root=str(tmp_path)))
    assert sorted(validated["id_str"]) == ["g\\xe9", "linked", "ok"]  # the content-store link is accepted
    assert validated.set_index("id_str").loc["linked", "file_loc"] == str(tmp_path / "img/linked.png")
    reasons = dict(zip(quarantine["id_str"], quarantine["reason"]))
    assert reasons == {
        "loop": "bad_path", "folder": "not_a_file", "fifo": "not_a_file", "device": "path_outside_root",
        "long": "bad_path", "nul": "bad_path", "latin1": "bad_path",
    }
    messages = dict(zip(quarantine["id_str"], quarantine["message"]))
    assert "symbolic links" in messages["loop"] and "a directory" in messages["folder"] and "a fifo" in messages["fifo"]
    assert "too long" in messages["long"] and "not valid UTF-8" in messages["latin1"]
    assert quarantine.set_index("id_str").loc["latin1", "file_loc"].endswith("caf\\xe9.png")  # shown escaped, storable
    quarantine.to_parquet(tmp_path / "q.parquet")  # the tables can be written
    validated_root = validate_catalog(tmp_path / "cat.csv", _cfg(image_root="/dev"))[1]
    assert dict(zip(validated_root["id_str"], validated_root["reason"]))["device"] == "not_a_file"  # a device under the root


def test_an_unreadable_file_is_quarantined(tmp_path):
    import os

    _image(tmp_path / "img" / "secret.png")
    os.chmod(tmp_path / "img" / "secret.png", 0)
    if os.access(tmp_path / "img" / "secret.png", os.R_OK):
        pytest.skip("running as root: every file is readable, so permissions cannot be tested here")
    path = _write(tmp_path, [{"id_str": "s", "file_loc": "img/secret.png", "a_yes": 1, "a_no": 1}])
    _, quarantine = validate_catalog(path, _cfg())
    assert quarantine["reason"].tolist() == ["unreadable_file"]


@pytest.mark.parametrize(
    ("content", "name", "message"),
    [
        (b"id_str,file_loc,a_yes,a_no\ng0,img/g0.png,1,2\ng1,img/g1.png,1,2,9\n", "ragged.csv", "line 3"),
        (b"", "empty.csv", "is empty"),
        (None, "truncated.parquet", "re-export or re-download it"),
    ],
    ids=["ragged-line", "empty-file", "truncated-parquet"],
)
def test_a_malformed_catalog_file_stops_with_its_name_and_line(catalog_dir, content, name, message):
    path = catalog_dir / name
    if content is None:
        _write(catalog_dir, [{"id_str": "g0", "file_loc": "img/g0.png", "a_yes": 1, "a_no": 2}], name)
        path.write_bytes(path.read_bytes()[:-20])
    else:
        path.write_bytes(content)
    with pytest.raises(CatalogError, match=message) as raised:
        validate_catalog(path, _cfg())
    assert str(path) in str(raised.value)


def test_a_duplicated_id_with_a_non_utf8_path_is_quarantined_and_written(tmp_path):
    """Rows quarantined before path inspection (duplicate_id here) store their path escaped, so the tables can be written."""
    import os

    from zoobot_core.catalog import write_validation

    _image(tmp_path / "img" / "g0.png")
    (tmp_path / os.fsdecode(b"img/caf\xff.png")).write_bytes(b"x")  # the file exists: only the bytes are odd
    (tmp_path / "cat.csv").write_bytes(
        b"id_str,file_loc,a_yes,a_no\n"
        b"ok,img/g0.png,1,2\n"
        b"dup,img/caf\xff.png,1,2\n"
        b"dup,img/caf\xff.png,3,4\n"
        b",img/caf\xff.png,1,2\n"  # missing_id, also before inspection
    )
    validated, quarantine = validate_catalog(tmp_path / "cat.csv", _cfg(image_root=str(tmp_path)))
    assert validated["id_str"].tolist() == ["ok"]
    assert quarantine["row"].tolist() == [1, 2, 3]
    assert quarantine["reason"].tolist() == ["duplicate_id", "duplicate_id", "missing_id"]
    assert quarantine["file_loc"].tolist() == ["img/caf\\xff.png"] * 3  # shown escaped, as bad_path rows are
    write_validation(validated, quarantine, tmp_path / "validated.parquet", tmp_path / "quarantine.parquet")
    written = pd.read_parquet(tmp_path / "quarantine.parquet")
    assert written["reason"].tolist() == ["duplicate_id", "duplicate_id", "missing_id"]
    assert written["file_loc"].tolist() == ["img/caf\\xff.png"] * 3
