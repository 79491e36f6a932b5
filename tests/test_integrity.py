"""Nothing silently wrong, nothing lost: damaged stores refused and repaired, failures as one-line errors.

Store-level checks use tiny hand-made stores; extraction checks the tiny ResNet on 6 synthetic images.
"""

import errno
import json
import os
import shutil
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest
import typer
from conftest import TINY_RESNET
from typer.testing import CliRunner

from cxrfeat.cli import app
from cxrfeat.cliutil import friendly
from cxrfeat.datasets import load_split
from cxrfeat.errors import UserError
from cxrfeat.extract import extract
from cxrfeat.store import COMPLETE, FeatureStore, build_group, remove_dead_creations

NAMES = ["Infiltration", "Effusion"]


def _store(path, n=6, chunk_rows=2, zeros=False):
    ids = [f"r{i}.png" for i in range(n)]
    labels = (np.arange(n * 2).reshape(n, 2) % 3 - 1).astype(np.int8)
    store = FeatureStore.create(path, ids=ids, labels=labels, label_names=NAMES, views=1, dim=4, dtype="float32",
                                attrs={"dataset": "nih-cxr-lt", "split": "val"}, settings={}, chunk_rows=chunk_rows)
    emb = np.zeros((n, 1, 4), np.float32) if zeros else np.random.default_rng(0).normal(size=(n, 1, 4)).astype(np.float32)
    for i in range(store.n_chunks):
        a, b = store.chunk_bounds(i)
        store.write_chunk(i, emb[a:b])
    store.finalize()
    return path, emb


def _verify(*paths):
    return CliRunner().invoke(app, ["verify", *map(str, paths)])


# ------------------------------------------------------------------------------------------ store level
def test_every_chunk_file_exists_even_all_fill_values(tmp_path):
    """Zarr skips chunks equal to the fill value; ours are always written, so a missing file is damage."""
    path, _ = _store(tmp_path / "s.zarr", zeros=True)
    for arr in ("embeddings/c/0/0/0", "embeddings/c/2/0/0", "valid/c/0", "valid/c/2", "progress/c/2", "labels/c/0/0",
                "ids/c/0"):
        assert (path / arr).is_file(), arr
    assert _verify(path).exit_code == 0


@pytest.mark.parametrize(
    ("damage", "named"),
    [
        (lambda p: (p / "embeddings/c/1/0/0").unlink(), r"embeddings/c/1/0/0: missing \(row chunk 1\)"),
        (lambda p: (p / "valid/c/2").unlink(), r"valid/c/2: missing \(row chunk 2\)"),
        (lambda p: (p / "embeddings/c/0/0/0").write_bytes((p / "embeddings/c/0/0/0").read_bytes()[:-7]),
         r"embeddings/c/0/0/0: checksum mismatch"),
        (lambda p: (p / "labels/c/0/0").write_bytes(b"\x00" * 5), r"labels/c/0/0: checksum mismatch"),
        (lambda p: shutil.rmtree(p / "labels"), r"array\(s\) labels missing"),
    ],
    ids=["deleted-chunk", "deleted-valid-chunk", "truncated-chunk", "corrupt-labels", "missing-array"],
)
def test_damaged_store_refused_naming_array_chunk_store_and_repair(tmp_path, damage, named):
    path, _ = _store(tmp_path / "s.zarr")
    damage(path)
    with pytest.raises(UserError, match=named) as info:
        FeatureStore.open(path).load()
    msg = str(info.value)
    assert str(path) in msg and ("--repair" in msg or "--overwrite" in msg) and "\n" not in msg
    result = _verify(path)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "damaged" in result.output and ("labels" if "labels" in named else named.split(":")[0]) in result.output


def test_verify_names_every_damaged_chunk_and_passes_intact_stores(tmp_path):
    path, _ = _store(tmp_path / "f" / "d" / "s.zarr")
    good, _ = _store(tmp_path / "f" / "d" / "t.zarr")
    (path / "embeddings/c/0/0/0").unlink()
    (path / "embeddings/c/2/0/0").write_bytes(b"junk")
    result = _verify(tmp_path / "f")
    assert result.exit_code == 2
    assert "embeddings/c/0/0/0: missing" in result.output and "embeddings/c/2/0/0: checksum mismatch" in result.output
    assert f"ok: {good}" in result.output
    assert _verify(good).exit_code == 0


def test_zarr_group_with_our_attribute_but_not_our_arrays(tmp_path):
    import zarr

    g = zarr.open_group(str(tmp_path / "x.zarr"), mode="w")
    g.attrs.update({"format_version": 1})
    with pytest.raises(UserError, match=r"x.zarr: damaged feature store: array\(s\) embeddings, valid, progress, "
                                        r"labels, ids missing"):
        FeatureStore.open(tmp_path / "x.zarr")
    # An unreadable chunk of an incomplete store (read without verification) is a UserError too.
    path, _ = _store(tmp_path / "s.zarr")
    (path / COMPLETE).unlink()
    (path / "labels/c/0/0").write_bytes(b"\x28\xb5\x2f\xfd garbage")
    store = FeatureStore.open(path, require_complete=False)
    with pytest.raises(UserError, match=r"array 'labels' cannot be read"):
        _ = store.labels


def test_completion_marker_is_a_separate_file_and_zarr_json_is_never_rewritten(tmp_path):
    path = tmp_path / "s.zarr"
    ids = ["a", "b", "c"]
    store = FeatureStore.create(path, ids=ids, labels=np.zeros((3, 2), np.int8), label_names=NAMES, views=1, dim=4,
                                dtype="float32", attrs={}, settings={}, chunk_rows=2)
    before = (path / "zarr.json").read_bytes()
    store.write_chunk(0, np.ones((2, 1, 4), np.float32))
    store.write_chunk(1, np.ones((1, 1, 4), np.float32), valid=np.array([False]))
    assert not store.complete
    skipped = store.finalize()
    assert skipped == ["c"] and (path / "zarr.json").read_bytes() == before
    marker = json.loads((path / COMPLETE).read_text())
    assert marker["skipped_ids"] == ["c"] and "embeddings/c/1/0/0" in marker["checksums"]
    opened = FeatureStore.open(path)
    assert opened.complete and opened.attrs["skipped_ids"] == ["c"]
    # Without the marker the store is incomplete, whatever zarr.json says.
    (path / COMPLETE).unlink()
    with pytest.raises(UserError, match="incomplete feature store .*2/2"):
        FeatureStore.open(path)


def test_creation_is_race_free_and_keeps_live_creations(tmp_path):
    path, emb = _store(tmp_path / "s.zarr")
    # A second creator of the same store loses and leaves the first one's store as it was.
    assert not build_group(path, ids=["z"], labels=np.zeros((1, 2), np.int8), label_names=NAMES, dtype="float32",
                           chunk_rows=1, settings={}, meta={}, make_data=lambda g, n, r: None)
    np.testing.assert_array_equal(FeatureStore.open(path).load().embeddings, emb)
    # Leftover private build folders: a dead process's is removed, a live one's (the parent's) is kept.
    from cxrfeat.locks import HOST

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    gone = tmp_path / f"s.zarr.creating-{HOST}-{dead.pid}-abc"
    live = tmp_path / f"s.zarr.creating-{HOST}-{os.getppid()}-abc"
    gone.mkdir()
    live.mkdir()
    remove_dead_creations(path)
    assert not gone.exists() and live.exists()


# ------------------------------------------------------------------------------------------ the CLI handler
def test_friendly_turns_failures_into_one_line(monkeypatch, tmp_path):
    cmd = typer.Typer()
    what = {}

    @cmd.command()
    @friendly
    def run():
        raise what["exc"]

    runner = CliRunner()
    cases = [
        (PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "ro")), 2, f"error: {tmp_path / 'ro'}: Permission denied"),
        (OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "f.bin")), 2,
         f"error: {tmp_path / 'f.bin'}: No space left on device ({tmp_path} has "),
        (KeyboardInterrupt(), 130, "interrupted: re-run the same command to resume"),
        (UserError("bad --x"), 2, "error: bad --x"),
        (ZeroDivisionError("boom"), 1, "internal error ZeroDivisionError: boom (this is a bug: re-run with CXR_DEBUG=1"),
    ]
    for exc, code, text in cases:
        what["exc"] = exc
        result = runner.invoke(cmd, [])
        assert result.exit_code == code, (exc, result.output)
        assert text in result.output and "Traceback" not in result.output
        assert len(result.output.strip().splitlines()) == 1
    monkeypatch.setenv("CXR_DEBUG", "1")
    what["exc"] = ZeroDivisionError("boom")
    result = runner.invoke(cmd, [])
    assert isinstance(result.exception, ZeroDivisionError)


# ------------------------------------------------------------------------------------------ extraction
def _run(data_dir, out, backbone, **kw):
    kw.setdefault("views", 1)
    return extract(dataset="nih-cxr-lt", split="val", data_dir=data_dir, out=out, backbone=backbone, chunk_rows=2,
                   batch_size=2, workers=1, progress=False, announce=kw.pop("announce", lambda m: None), **kw)


def _emb(path):
    return np.asarray(FeatureStore.open(path).group["embeddings"][:])


@pytest.fixture
def copy(data, tmp_path):
    """A private copy of the NIH-layout synthetic data (tests damage its images)."""
    shutil.copytree(data / "nih-cxr-lt", tmp_path / "data")
    return tmp_path / "data"


@pytest.fixture(scope="module")
def ckpt(backbone, tmp_path_factory):
    from cxrfeat.weights import save_checkpoint

    return save_checkpoint(backbone, tmp_path_factory.mktemp("ckpt") / "ckpt")


def _cli(copy, out, ckpt, *extra):
    return CliRunner().invoke(app, ["extract", "--split", "val", "--data-dir", str(copy), "--out", str(out),
                                    "--weights", str(ckpt), "--workers", "1", *extra])


def test_repair_recomputes_only_damaged_chunks_bit_for_bit(data, backbone, tmp_path):
    path, _ = _run(data / "nih-cxr-lt", tmp_path / "f", backbone)
    clean = _emb(path)
    marker = (path / COMPLETE).read_text()
    (path / "embeddings/c/1/0/0").unlink()
    (path / "valid/c/2").write_bytes(b"x")
    with pytest.raises(UserError, match=r"embeddings/c/1/0/0: missing.*valid/c/2: checksum mismatch.*--repair"):
        _run(data / "nih-cxr-lt", tmp_path / "f", backbone)  # a plain rerun refuses, naming the damage
    messages = []
    _, timing = _run(data / "nih-cxr-lt", tmp_path / "f", backbone, repair=True, announce=messages.append)
    assert timing.images == 4  # chunks 1 and 2 only
    assert any("repairing 2 damaged chunk(s) 1, 2" in m for m in messages)
    np.testing.assert_array_equal(_emb(path), clean)
    assert json.loads((path / COMPLETE).read_text())["checksums"] == json.loads(marker)["checksums"]
    assert _verify(path).exit_code == 0


def test_overwrite_restores_and_a_failed_overwrite_leaves_the_old_store(copy, backbone, tmp_path):
    out = tmp_path / "f"
    path, _ = _run(copy, out, backbone)
    clean = _emb(path)
    ds = load_split("nih-cxr-lt", copy, "val")
    good = Path(ds.paths[4]).read_bytes()
    Path(ds.paths[4]).write_bytes(b"not a png")
    with pytest.raises(UserError, match=rf"{Path(ds.paths[4]).name}.*line {ds.rows[4]}"):
        _run(copy, out, backbone, views=2, overwrite=True)
    np.testing.assert_array_equal(_emb(path), clean)  # the old store is untouched and still verifies
    assert FeatureStore.open(path).views == 1 and (out / "nih-cxr-lt" / "val.zarr.new").is_dir()
    Path(ds.paths[4]).write_bytes(good)
    _, timing = _run(copy, out, backbone, views=2, overwrite=True)
    assert timing.images == 2  # the unfinished overwrite resumed (chunk 2 only)
    assert FeatureStore.open(path).views == 2
    assert sorted(p.name for p in (out / "nih-cxr-lt").iterdir()) == ["val.zarr"]
    # --overwrite also replaces a damaged store.
    (path / "embeddings/c/0/0/0").unlink()
    _run(copy, out, backbone, overwrite=True)
    np.testing.assert_array_equal(_emb(path), clean)


def _png_header_only(path, width, height):
    """A PNG whose header says width x height (the pixels are never decoded: it is refused first)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def test_decompression_bomb_named_with_its_size_and_skipped(copy, ckpt, tmp_path, monkeypatch):
    ds = load_split("nih-cxr-lt", copy, "val")
    _png_header_only(Path(ds.paths[3]), 14000, 14000)
    result = _cli(copy, tmp_path / "f", ckpt)
    assert result.exit_code == 2, result.output
    assert f"{ds.paths[3]}: image of 14000 x 14000 = 196,000,000 pixels is larger than the limit" in result.output
    assert "Traceback" not in result.output
    result = _cli(copy, tmp_path / "f", ckpt, "--skip-bad")
    assert result.exit_code == 0, result.output
    assert FeatureStore.open(tmp_path / "f" / "nih-cxr-lt" / "val.zarr").attrs["skipped_ids"] == [ds.ids[3]]
    # The limit is configurable (a smaller one refuses the 64-pixel images too).
    from cxrfeat.preprocess import ImageError, load_and_preprocess

    monkeypatch.setenv("CXR_MAX_IMAGE_PIXELS", "100")
    with pytest.raises(ImageError, match="larger than the limit of 100"):
        load_and_preprocess(ds.paths[0])


def test_disk_full_during_extraction_and_at_finalisation(data, ckpt, backbone, tmp_path, monkeypatch):
    import zarr.storage._local as local

    import cxrfeat.atomic

    clean, _ = _run(data / "nih-cxr-lt", tmp_path / "clean", backbone)
    out = tmp_path / "f"
    original = local._put

    def full_disk(path, value, exclusive=False):  # Zarr's local file writer
        if "/val.zarr/embeddings/c/" in Path(path).as_posix():
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(path, value, exclusive=exclusive)

    monkeypatch.setattr(local, "_put", full_disk)
    result = _cli(data / "nih-cxr-lt", out, ckpt)
    assert result.exit_code == 2, result.output
    err = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "No space left on device" in err[0] and "free)" in err[0]
    assert f"cannot write chunk 0 of {out / 'nih-cxr-lt' / 'val.zarr'}" in err[0] and "Traceback" not in result.output
    monkeypatch.setattr(local, "_put", original)

    write_bytes = cxrfeat.atomic.write_bytes

    def full_at_the_end(path, data_):
        if Path(path).name == COMPLETE:
            raise OSError(errno.ENOSPC, "No space left on device")
        return write_bytes(path, data_)

    monkeypatch.setattr(cxrfeat.atomic, "write_bytes", full_at_the_end)
    result = _cli(data / "nih-cxr-lt", out, ckpt)
    assert result.exit_code == 2 and "cannot write the completion marker" in result.output and "free)" in result.output
    monkeypatch.setattr(cxrfeat.atomic, "write_bytes", write_bytes)
    assert _cli(data / "nih-cxr-lt", out, ckpt).exit_code == 0
    np.testing.assert_array_equal(_emb(out / "nih-cxr-lt" / "val.zarr"), _emb(clean))  # nothing corrupted


def test_read_only_output_folder(data, ckpt, tmp_path, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() == 0:  # root ignores permission bits: make the folder refuse new entries another way
        real_mkdir = Path.mkdir

        def refuse(self, *a, **k):
            if str(self).startswith(str(ro)) and self != ro:
                raise PermissionError(errno.EACCES, "Permission denied", str(self))
            return real_mkdir(self, *a, **k)

        monkeypatch.setattr(Path, "mkdir", refuse)
    else:
        ro.chmod(0o555)
    try:
        result = _cli(data / "nih-cxr-lt", ro, ckpt)
    finally:
        ro.chmod(0o755)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and str(ro / "nih-cxr-lt") in lines[0] and "Permission denied" in lines[0]
    assert "Traceback" not in result.output and list(ro.iterdir()) == []


def test_skip_bad_killed_and_resumed_with_the_image_fixed(copy, backbone, tmp_path, monkeypatch):
    clean, _ = _run(copy, tmp_path / "clean", backbone)
    ds = load_split("nih-cxr-lt", copy, "val")
    good = Path(ds.paths[1]).read_bytes()
    Path(ds.paths[1]).write_bytes(b"broken")
    original = FeatureStore.write_chunk
    calls = {"n": 0}

    def dying(self, i, emb, valid=None):
        if calls["n"] == 2:
            raise KeyboardInterrupt
        calls["n"] += 1
        original(self, i, emb, valid)

    monkeypatch.setattr(FeatureStore, "write_chunk", dying)
    with pytest.raises(KeyboardInterrupt):
        _run(copy, tmp_path / "f", backbone, skip_bad=True)
    monkeypatch.setattr(FeatureStore, "write_chunk", original)
    store = FeatureStore.open(tmp_path / "f" / "nih-cxr-lt" / "val.zarr", require_complete=False)
    assert store.done_chunks().tolist() == [True, True, False] and not store.valid[1]
    # Still broken: resumed, the skipped id is listed once.
    path, timing = _run(copy, tmp_path / "f", backbone, skip_bad=True)
    assert FeatureStore.open(path).attrs["skipped_ids"] == [ds.ids[1]] and timing.skipped == [ds.ids[1]]
    # Killed again, then the image fixed: the retried chunk makes the row valid, the store equals a clean one.
    (path / COMPLETE).unlink()
    (path / "checksums" / "chunk-2.json").unlink()
    Path(ds.paths[1]).write_bytes(good)
    path, timing = _run(copy, tmp_path / "f", backbone, skip_bad=True)
    store = FeatureStore.open(path)
    assert store.valid.all() and store.attrs["skipped_ids"] == [] and timing.skipped == []
    np.testing.assert_array_equal(_emb(path), _emb(clean))


def test_two_concurrent_extractions_of_one_store(data, tmp_path):
    script = textwrap.dedent(f"""
        import sys, time
        from transformers import ResNetConfig
        import cxrfeat.preprocess as pp
        from cxrfeat.backbone import load_backbone
        from cxrfeat.extract import extract
        slow = pp.load_and_preprocess
        def load(path):
            time.sleep(0.2)
            return slow(path)
        pp.load_and_preprocess = load
        bb = load_backbone("random", seed=0, config=ResNetConfig(**{TINY_RESNET!r}))
        path, t = extract(dataset="nih-cxr-lt", split="val", data_dir=sys.argv[1], out=sys.argv[2], backbone=bb,
                          views=1, chunk_rows=2, batch_size=2, workers=1, progress=False, announce=print)
        print("images", t.images)
    """)
    out = tmp_path / "f"
    procs = [subprocess.Popen([sys.executable, "-c", script, str(data / "nih-cxr-lt"), str(out)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    said = "".join(o + e for o, e in results)
    # One did the work, the other waited for it (naming the owner) and found the store complete.
    assert sorted(int(o.split("images")[-1]) for o, _ in results) == [0, 6], said
    assert "waiting: feature store" in said and "pid" in said
    from transformers import ResNetConfig

    from cxrfeat.backbone import load_backbone

    ref, _ = _run(data / "nih-cxr-lt", tmp_path / "ref", load_backbone("random", seed=0, config=ResNetConfig(**TINY_RESNET)))
    np.testing.assert_array_equal(_emb(out / "nih-cxr-lt" / "val.zarr"), _emb(ref))
    assert not (out / "nih-cxr-lt" / "val.zarr.lock").exists()


def test_image_cache_refuses_damage_and_rebuilds_damaged_shards(data, tmp_path):
    from cxrfeat.imagecache import ImageCache, build_cache

    ds = load_split("nih-cxr-lt", data / "nih-cxr-lt", "val")
    cache = build_cache(ds, tmp_path / "c.zarr", chunk_rows=2, workers=1)
    clean = np.asarray(cache.images[:])
    (tmp_path / "c.zarr" / "images/c/1/0/0/0").unlink()
    with pytest.raises(UserError, match=r"images/c/1/0/0/0: missing \(row chunk 1\).*heads finetune"):
        ImageCache.open(tmp_path / "c.zarr")
    assert _verify(tmp_path / "c.zarr").exit_code == 2
    messages = []
    rebuilt = build_cache(ds, tmp_path / "c.zarr", chunk_rows=2, workers=1, say=messages.append)
    assert any("rebuilding 1 damaged shard" in m for m in messages)
    np.testing.assert_array_equal(np.asarray(rebuilt.images[:]), clean)
    assert _verify(tmp_path / "c.zarr").exit_code == 0


# ------------------------------------------------------------------------------------------ damaged JSON
def test_read_json_names_the_file_where_it_stops_and_what_it_is(tmp_path):
    from cxrfeat.atomic import read_json

    f = tmp_path / "x.json"
    for content, said in [(b'{"a": [1, 2', "not valid JSON (line 1 column 12)"), (b"", "not valid JSON (empty file)"),
                          (b"[1]", "holds an array where JSON an object belongs"),
                          (b'{"a": "\xff"}', "not valid JSON (not UTF-8 text at byte 7)")]:
        f.write_bytes(content)
        with pytest.raises(UserError) as info:
            read_json(f, what="the thing", remedy="write it again")
        assert str(info.value) == f"{f}: {said}: the thing is damaged; write it again"
    f.write_text('{"a": 1}')
    assert read_json(f, what="the thing") == {"a": 1}
    with pytest.raises(FileNotFoundError):
        read_json(tmp_path / "none.json", what="the thing")


@pytest.mark.parametrize("name", ["zarr.json", "embeddings/zarr.json", "ids/zarr.json", COMPLETE])
def test_damaged_metadata_is_one_line_naming_the_file(tmp_path, name):
    """A truncated `zarr.json` (of the group or of an array) or completion marker: never a JSONDecodeError."""
    path, _ = _store(tmp_path / "f" / "nih-cxr-lt" / "val.zarr")
    good, _ = _store(tmp_path / "f" / "nih-cxr-lt" / "test.zarr")
    (path / name).write_bytes((path / name).read_bytes()[:30])
    said = rf"{path / name}: not valid JSON \(line \d+ column \d+\): the (metadata|completion marker) .*{path} is damaged"
    with pytest.raises(UserError, match=said):
        FeatureStore.open(path).load()
    for cmd in (["info", str(path)], ["verify", str(tmp_path / "f")]):
        result = CliRunner().invoke(app, cmd)
        assert result.exit_code == 2 and "Traceback" not in result.output and "internal error" not in result.output
        errors = [line for line in result.output.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and str(path / name) in errors[0] and "not valid JSON" in errors[0], result.output
    assert f"ok: {good}" in result.output  # `verify` goes on with the other stores


def test_a_damaged_completion_marker_is_remade_as_its_message_says(data, backbone, tmp_path):
    path, _ = _run(data / "nih-cxr-lt", tmp_path / "f", backbone)
    clean = _emb(path)
    (path / COMPLETE).write_text('{"complete": tr')
    with pytest.raises(UserError, match="completion marker .* is damaged; delete it and re-run"):
        _run(data / "nih-cxr-lt", tmp_path / "f", backbone)
    (path / COMPLETE).unlink()
    _, timing = _run(data / "nih-cxr-lt", tmp_path / "f", backbone)
    assert timing.images == 0 and _verify(path).exit_code == 0
    np.testing.assert_array_equal(_emb(path), clean)


# ------------------------------------------------------------------------------------------ misplaced stores
def test_extraction_refuses_a_store_of_another_split_at_its_path(data, backbone, tmp_path):
    foreign, _ = _store(tmp_path / "other" / "s.zarr")  # holds nih-cxr-lt val
    shutil.copytree(foreign, tmp_path / "f" / "nih-cxr-lt" / "test.zarr")
    with pytest.raises(UserError, match=r"test.zarr: this feature store holds nih-cxr-lt val, not nih-cxr-lt test "
                                        r"\(copied or renamed\?\); its place is .*nih-cxr-lt/val.zarr"):
        extract(dataset="nih-cxr-lt", split="test", data_dir=data / "nih-cxr-lt", out=tmp_path / "f",
                backbone=backbone, views=1, chunk_rows=2, batch_size=2, workers=1, progress=False)


def _heads(*args):
    from heads.cli import app as heads_app

    return CliRunner().invoke(heads_app, [str(a) for a in args])


def _tiny_sweep(tmp_path):
    from headsdata import make_stores

    features = make_stores(tmp_path / "features", n_train=16, n_val=8, n_test=8, dim=8)
    return features, ["sweep", "--features", features, "--runs", tmp_path / "runs", "--name", "s", "--tasks", "8",
                      "--models", "cdl", "--seeds", "1", "--max-epochs", "1"]


def test_heads_sweep_refuses_a_store_copied_in_as_another_split(tmp_path):
    """The MIMIC test store copied in as the NIH validation split."""
    features, sweep = _tiny_sweep(tmp_path)
    val = features / "nih-cxr-lt" / "val.zarr"
    shutil.rmtree(val)
    shutil.copytree(features / "mimic-cxr-lt" / "test.zarr", val)
    result = _heads(*sweep)
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert result.output.strip().splitlines() == [
        f"error: {val}: this feature store holds mimic-cxr-lt test, not nih-cxr-lt val (copied or renamed?); its "
        f"place is {features / 'mimic-cxr-lt' / 'test.zarr'}; the nih-cxr-lt val feature store belongs here (run "
        f"`cxrfeat extract` first)"]
    assert not (tmp_path / "runs").exists()


def test_heads_sweep_refuses_a_damaged_sweep_record_naming_it(tmp_path):
    """A sweep record truncated since the last run: one line naming it; nothing trained, the file left as it was."""
    _, sweep = _tiny_sweep(tmp_path)
    record = tmp_path / "runs" / "s" / "sweep.json"
    record.parent.mkdir(parents=True)
    record.write_text('{"name": "s", "tasks": ["cxr-8"], "mod')
    result = _heads(*sweep)
    assert result.exit_code == 2 and "internal error" not in result.output, result.output
    assert result.output.strip() == (f"error: {record}: not valid JSON (line 1 column 35): the sweep record of "
                                     f"{record.parent} is damaged; restore it, or delete it and re-run this sweep's "
                                     f"commands (finished runs are kept)")
    assert record.read_text().endswith('"mod')
    assert [p.name for p in record.parent.iterdir() if not p.name.startswith(".")] == ["sweep.json"]
